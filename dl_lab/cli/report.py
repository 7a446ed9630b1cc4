"""`dllab report`: rebuild tables and plots from finished runs, without training (and without torch)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from dl_lab.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    AlphaOption,
    ExpectOption,
    JsonOption,
    WideOption,
    check_alpha,
    folder_option,
)
from dl_lab.cli.render import render_comparison


def report(
    folders: Annotated[list[Path], typer.Argument(help="A compare folder, or train run folders (or folders of them).")],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Where to write: a new or empty folder, or an earlier "
            "report's (default: the compare folder, else "
            "runs/report-<time>).",
        ),
    ] = None,
    json_: JsonOption = False,
    wide: WideOption = False,
    expect: ExpectOption = None,
    alpha: AlphaOption = None,
) -> None:
    """Rebuild tables and plots from existing runs, without training.

    Exit codes: 0 every run completed and every expectation holds, 1 an expectation fails, 2 bad input
    or the folder is in use, 3 the comparison is incomplete (a run failed, was interrupted or is missing).
    """
    from dl_lab.analysis.load import load_compare, load_loose_runs
    from dl_lab.analysis.report import claim_report, complete_report, output_names, parse_expectation
    from dl_lab.errors import ConfigError
    from dl_lab.runs.locks import FolderLock
    from dl_lab.runs.store import (
        PLAN_FILE,
        check_report_folder,
        create_run_dir,
        make_folder,
    )

    folders = [folder_option(f) for f in folders]
    with contextlib.ExitStack() as held:
        check_alpha(alpha)
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise ConfigError(f"report: no such folder: {', '.join(missing)}")
        compare_folder = folders[0] if len(folders) == 1 and (folders[0] / PLAN_FILE).is_file() else None
        target = folder_option(out) if out is not None else compare_folder
        if target is not None:
            check_report_folder(target, output_names(), compare_folder)
            if target.is_dir():  # one writer: a comparison still training there, or another report
                held.enter_context(FolderLock(target, "comparison" if target == compare_folder else "report folder"))
        loaded = load_compare(compare_folder) if compare_folder else load_loose_runs(folders)
        if not any(result.runs for result in loaded.results):
            found = (
                f" ({', '.join(loaded.unfinished[:3])}{', …' if len(loaded.unfinished) > 3 else ''})"
                if loaded.unfinished
                else ""
            )
            raise ConfigError(f"report: no completed runs found in {', '.join(map(str, folders))}{found}")
        expectations = [parse_expectation(text, [r.label for r in loaded.results]) for text in expect or []]
        if target is None or not target.is_dir():  # created after validation: no empty folders
            target = target or create_run_dir(Path("runs"), "", prefix="report-")
            make_folder(target, "--out")
            held.enter_context(FolderLock(target, "report folder"))
        status = "incomplete" if loaded.unfinished else "completed"
        summary = complete_report(
            claim_report(target, loaded, expectations, alpha, status, compare_folder=compare_folder)
        )
        render_comparison(summary, target, json_, wide=wide)
    if loaded.unfinished:
        hint = f"; finish with dllab compare --resume {compare_folder}" if compare_folder else ""
        typer.echo(
            f"error: incomplete: {len(loaded.unfinished)} run(s) did not complete "
            f"({', '.join(loaded.unfinished[:3])}{', …' if len(loaded.unfinished) > 3 else ''}){hint}",
            err=True,
        )
        raise typer.Exit(EXIT_RUN_FAILED)
    raise typer.Exit(EXIT_OK if all(e.holds for e in summary.expectations) else EXIT_FAILED)
