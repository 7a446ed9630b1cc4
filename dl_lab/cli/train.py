"""`dllab train`: one config, one run folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dl_lab.runs.records import RunSummary

from dl_lab.cli.common import (
    EXIT_FAILED,
    STATUS_EXIT,
    ConfigOption,
    SetOption,
    folder_option,
    interrupted_exit,
)


def train(
    config: ConfigOption,
    set_: SetOption = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders are created.")] = Path("runs"),
    json_: Annotated[
        bool, typer.Option("--json", help="Print summary.json to stdout (progress stays on stderr).")
    ] = False,
) -> None:
    """Train one model from a config; write config.yaml, metrics.csv, summary.json and env.json to a new run folder.

    Exit codes: 0 completed, 1 failed, 2 bad input (nothing written), 3 diverged (non-finite loss or RBM pre-training),
    130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP.
    """
    from rich.console import Console

    from dl_lab.cli.progress import progress_for
    from dl_lab.experiments.execute import prepare, run_one
    from dl_lab.runs.store import check_writable_folder

    runs_dir = folder_option(runs_dir)
    check_writable_folder(runs_dir, "--runs-dir")
    prepared = prepare(config, set_ or [], os.environ)
    with progress_for(Console(stderr=True), sys.stderr, str(prepared.device)) as progress:
        try:
            summary = run_one(prepared, runs_dir, progress)
        except OSError as exc:  # the run folder itself could not be written (disk full, permissions)
            typer.echo(f"error: cannot write a run folder under {runs_dir}: {exc.strerror or exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    if json_:
        typer.echo(json.dumps(summary.to_json_dict(), indent=2))
    else:
        typer.echo(_result_text(summary))
    if summary.status == "failed":
        error_file = Path(summary.run_dir) / "error.txt"
        where = f" (traceback in {error_file})" if error_file.is_file() else ""
        typer.echo(f"error: training failed: {summary.error}{where}", err=True)
    if summary.status == "diverged":
        key = "model.rbm.lr" if "pretraining_layer" in (summary.diverged_at or {}) else "optimizer.lr"
        typer.echo(
            f"error: training diverged: {summary.error}. The metrics of the epochs before are kept in "
            f"{summary.run_dir}; a smaller {key} usually helps.",
            err=True,
        )
    raise typer.Exit(STATUS_EXIT.get(summary.status) if summary.status != "interrupted" else interrupted_exit())


def _result_text(summary: RunSummary) -> str:
    if summary.is_short:  # the short summary written when the disk was full
        return f"{summary.status}: {summary.name}  {summary.epochs} epochs\nrun folder: {summary.run_dir}"
    final = summary.final
    numbers = f"test_acc {final.test_acc:.4f}  test_loss {final.test_loss:.4f}  " if final else ""
    return (
        f"{summary.status}: {summary.name}  {numbers}{summary.epochs}/{summary.epochs_planned} epochs "
        f"in {summary.seconds or 0.0:.1f}s on {summary.device}\nrun folder: {summary.run_dir}"
    )
