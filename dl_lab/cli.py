"""The `dllab` command line. Thin: parse, load config, call the library, render.

Heavy imports (torch, pydantic) happen inside commands so that `dllab --help` stays instant.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer

from dl_lab.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3  # interrupted: 128 + the signal (130, 143, 129)
STATUS_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "diverged": EXIT_RUN_FAILED}

app = typer.Typer(
    name="dllab",
    help="Train and compare small PyTorch MLPs on MNIST from YAML configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[str, typer.Option(
    "--config", "-c", metavar="CONFIG",
    help="A YAML file, or a name: configs/NAME.yaml under the current folder, else a preset shipped with dl_lab.")]
SetOption = Annotated[Optional[List[str]], typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a config key (dotted; value parsed as YAML), e.g. --set model.activation=sigmoid. Repeatable.")]


class Engine(str, enum.Enum):
    auto = "auto"
    batched = "batched"
    sequential = "sequential"


@app.callback()
def _setup() -> None:
    """Train and compare small PyTorch MLPs on MNIST from YAML configs."""
    from dl_lab import signals

    signals.install()  # SIGTERM and SIGHUP end a run like Ctrl-C: status interrupted


def interrupted_exit() -> int:
    from dl_lab import signals

    return signals.exit_code()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input becomes 'error: ...' on stderr and exit code 2, never a traceback; an interrupt
    (Ctrl-C, SIGTERM, SIGHUP) exits 128 + the signal's number."""
    try:
        yield
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        from dl_lab import signals

        signals.note(exc)
        typer.echo("interrupted", err=True)
        raise typer.Exit(interrupted_exit()) from None


def _folder(path: Path) -> Path:
    """A path option as the user meant it: '~' expanded."""
    return path.expanduser()


@app.command()
@user_errors()
def train(
    config: ConfigOption,
    set_: SetOption = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders are created.")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout (progress stays on stderr).")] = False,
) -> None:
    """Train one model from a config; write config.yaml, metrics.csv, summary.json and env.json to a new run folder.

    Exit codes: 0 completed, 1 failed, 2 bad input (nothing written), 3 diverged (non-finite loss),
    130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP.
    """
    from rich.console import Console

    from dl_lab.experiment import prepare, run_one
    from dl_lab.progress import progress_for
    from dl_lab.store import check_writable_folder

    runs_dir = _folder(runs_dir)
    check_writable_folder(runs_dir, "--runs-dir")
    prepared = prepare(config, set_ or [], os.environ)
    with progress_for(Console(stderr=True), sys.stderr, str(prepared.device)) as progress:
        try:
            summary = run_one(prepared, runs_dir, progress)
        except OSError as exc:  # the run folder itself could not be written (disk full, permissions)
            typer.echo(f"error: cannot write a run folder under {runs_dir}: {exc.strerror or exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(_result_text(summary))
    if summary["status"] == "failed":
        error_file = Path(summary["run_dir"]) / "error.txt"
        where = f" (traceback in {error_file})" if error_file.is_file() else ""
        typer.echo(f"error: training failed: {summary['error']}{where}", err=True)
    if summary["status"] == "diverged":
        typer.echo(f"error: training diverged: {summary['error']}. The metrics of the epochs before are kept in "
                   f"{summary['run_dir']}; a smaller optimizer.lr usually helps.", err=True)
    raise typer.Exit(STATUS_EXIT.get(summary["status"]) if summary["status"] != "interrupted" else interrupted_exit())


def _result_text(summary: dict) -> str:
    final = summary.get("final")
    numbers = (f"test_acc {final['test_acc']:.4f}  test_loss {final['test_loss']:.4f}  " if final else "")
    if "epochs_planned" not in summary:  # the short summary written when the disk was full
        return f"{summary['status']}: {summary['name']}  {summary['epochs']} epochs\nrun folder: {summary['run_dir']}"
    return (f"{summary['status']}: {summary['name']}  {numbers}{summary['epochs']}/{summary['epochs_planned']} epochs "
            f"in {summary['seconds']:.1f}s on {summary['device']}\nrun folder: {summary['run_dir']}")


ExpectOption = Annotated[Optional[List[str]], typer.Option(
    "--expect", metavar="EXPR",
    help="Check a result, e.g. 'relu > sigmoid' (test_acc) or 'relu.test_loss < sigmoid.test_loss'. Repeatable.")]
AlphaOption = Annotated[Optional[float], typer.Option(
    "--alpha", help="Also demand significance: a paired t-test p-value below ALPHA for every --expect.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print summary.json to stdout (progress stays on stderr).")]


def _check_alpha(alpha: float | None) -> None:
    from dl_lab.errors import ConfigError

    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"--alpha: must be between 0 and 1 (got {alpha})")


@app.command()
@user_errors()
def compare(
    names: Annotated[Optional[List[str]], typer.Argument(
        help="Configs to compare: configs/NAME.yaml, a preset (e.g. lab09/xavier) or a path. The first is the baseline.")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Seeds per variant (default 3); seed i is shared by all variants.")] = None,
    set_: SetOption = None,
    vary: Annotated[Optional[List[str]], typer.Option(
        "--vary", metavar="KEY=V1,V2", help="Expand into one variant per value; several --vary make a grid.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N for every variant.")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where the comparison folder is created.")] = Path("runs"),
    json_: JsonOption = False,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="FOLDER", help="Finish an interrupted comparison: keep completed runs, rerun the rest.")] = None,
    expect: ExpectOption = None,
    alpha: AlphaOption = None,
    engine: Annotated[Optional[Engine], typer.Option(
        "--engine", help="auto (default): train runs that share an architecture together (stacked weights); "
                         "sequential: one model at a time; batched: stack every run.")] = None,
    max_runs: Annotated[Optional[int], typer.Option(
        "--max-runs", help="Refuse a comparison of more runs than this (default 1000), so a typo in --seeds "
                           "cannot start thousands of runs.")] = None,
) -> None:
    """Train several variants over matched seeds; write tables (Markdown, CSV, JSON) and plots.

    Exit codes: 0 all expectations hold, 1 an expectation fails, 2 bad input (before training) or the
    folder is in use, 3 a run failed, 130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP (finish it with --resume).
    """
    from rich.console import Console

    from dl_lab.compare import (DEFAULT_MAX_RUNS, create_compare_dir, load_plan, plan_comparison, set_aside_unfinished,
                                survey, units_to_train)
    from dl_lab.errors import ConfigError
    from dl_lab.experiment import check_units, load_data_for, run_compare
    from dl_lab.locks import FolderLock
    from dl_lab.progress import progress_for
    from dl_lab.report import output_names, parse_expectation, report_compare
    from dl_lab.scheduling import describe_units
    from dl_lab.store import check_report_folder, check_writable_folder

    runs_dir = _folder(runs_dir)
    with contextlib.ExitStack() as held:
        if resume is not None:
            resume = _folder(resume)
            if names or set_ or vary or device or seeds is not None or max_runs is not None:
                raise ConfigError("--resume FOLDER continues a comparison as planned: give no NAMES, --set, --vary, "
                                  "--device, --seeds or --max-runs with it")
            if not resume.is_dir():
                raise ConfigError(f"--resume {resume}: no such folder")
            held.enter_context(FolderLock(resume, "comparison"))  # one writer: a second resume exits 2
            plan = load_plan(resume)
            if engine is not None and engine.value != plan.engine:
                raise ConfigError(f"--engine {engine.value}: this comparison was planned with --engine {plan.engine}, "
                                  "and a resumed run must train the same way; allowed: no --engine with --resume")
        else:
            check_writable_folder(runs_dir, "--runs-dir")
            overrides = [*(set_ or []), *([f"device={device}"] if device else [])]
            plan = plan_comparison(names or [], overrides, vary or [], 3 if seeds is None else seeds,
                                   engine=(engine or Engine.auto).value,
                                   max_runs=DEFAULT_MAX_RUNS if max_runs is None else max_runs)
        expectations = [parse_expectation(text, [v.label for v in plan.variants]) for text in expect or []]
        _check_alpha(alpha)
        data = load_data_for([run.config for run in plan.runs], os.environ)
        check_units(plan, data)
        if resume is not None:
            found = survey(resume, plan)
            found.refuse_mismatched(resume, plan)
            check_report_folder(resume, output_names(), compare_folder=resume)
            folder = resume
        else:
            found = None
            folder, lock = create_compare_dir(runs_dir, plan, {"names": names, "set": set_ or [], "vary": vary or [],
                                                                "device": device})
            held.callback(lock.release)
        todo = units_to_train(plan, found.done if found else frozenset())
        if found is not None:
            set_aside_unfinished(found)
        engine_text = describe_units(plan.engine, [unit for unit, _ in todo])
        recorded = sum(len(record) for _, record in todo)
        riding = sum(len(unit.runs) for unit, _ in todo) - recorded
        typer.echo(f"engine {engine_text}" + (f" ({riding} finished run(s) retrained unrecorded with their stack, "
                                              "so the others' numbers are exactly those of an uninterrupted comparison)"
                                              if riding else ""), err=True)
        devices = ", ".join(sorted({str(device) for device, _ in data.values()}))
        with progress_for(Console(stderr=True), sys.stderr, devices, total_runs=recorded) as progress:
            trained, interrupted = run_compare(folder, plan, todo, data, progress)
        summary = report_compare(folder, expectations, alpha, interrupted, engine=engine_text)
        _render_comparison(summary, folder, json_, trained_now=len(trained), kept=len(plan.runs) - recorded)
    status = summary["status"]
    if status == "interrupted":
        typer.echo(f"interrupted: finish with dllab compare --resume {folder}", err=True)
        raise typer.Exit(interrupted_exit())
    if status == "failed":
        failed = [f"{s['run_dir']} ({s['status']})" for s in trained if s["status"] != "completed"]
        typer.echo(f"error: {len(failed)} run(s) failed or diverged: {', '.join(failed)}", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)
    raise typer.Exit(EXIT_OK if all(e["holds"] for e in summary["expectations"]) else EXIT_FAILED)


@app.command()
@user_errors()
def report(
    folders: Annotated[List[Path], typer.Argument(help="A compare folder, or train run folders (or folders of them).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write: a new or empty folder, or an earlier "
                                                              "report's (default: the compare folder, else "
                                                              "runs/report-<time>).")] = None,
    json_: JsonOption = False,
    expect: ExpectOption = None,
    alpha: AlphaOption = None,
) -> None:
    """Rebuild tables and plots from existing runs, without training.

    Exit codes: 0 every run completed and every expectation holds, 1 an expectation fails, 2 bad input
    or the folder is in use, 3 the comparison is incomplete (a run failed, was interrupted or is missing).
    """
    from dl_lab.errors import ConfigError
    from dl_lab.locks import FolderLock
    from dl_lab.report import load_compare, load_loose_runs, output_names, parse_expectation, write_report
    from dl_lab.store import PLAN_FILE, check_report_folder, create_run_dir, make_folder

    folders = [_folder(f) for f in folders]
    with contextlib.ExitStack() as held:
        _check_alpha(alpha)
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise ConfigError(f"report: no such folder: {', '.join(missing)}")
        compare_folder = folders[0] if len(folders) == 1 and (folders[0] / PLAN_FILE).is_file() else None
        target = _folder(out) if out is not None else compare_folder
        if target is not None:
            check_report_folder(target, output_names(), compare_folder)
            if target.is_dir():  # one writer: a comparison still training there, or another report
                held.enter_context(FolderLock(target, "comparison" if target == compare_folder else "report folder"))
        loaded = load_compare(compare_folder) if compare_folder else load_loose_runs(folders)
        if not any(result.runs for result in loaded.results):
            found = f" ({', '.join(loaded.unfinished[:3])}{', …' if len(loaded.unfinished) > 3 else ''})" \
                if loaded.unfinished else ""
            raise ConfigError(f"report: no completed runs found in {', '.join(map(str, folders))}{found}")
        expectations = [parse_expectation(text, [r.label for r in loaded.results]) for text in expect or []]
        if target is None or not target.is_dir():  # created after validation: no empty folders
            target = target or create_run_dir(Path("runs"), "", prefix="report-")
            make_folder(target, "--out")
            held.enter_context(FolderLock(target, "report folder"))
        status = "incomplete" if loaded.unfinished else "completed"
        summary = write_report(target, loaded, expectations, alpha, status, compare_folder=compare_folder)
        _render_comparison(summary, target, json_)
    if loaded.unfinished:
        hint = f"; finish with dllab compare --resume {compare_folder}" if compare_folder else ""
        typer.echo(f"error: incomplete: {len(loaded.unfinished)} run(s) did not complete "
                   f"({', '.join(loaded.unfinished[:3])}{', …' if len(loaded.unfinished) > 3 else ''}){hint}", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)
    raise typer.Exit(EXIT_OK if all(e["holds"] for e in summary["expectations"]) else EXIT_FAILED)


def _render_comparison(summary: dict, folder: Path, json_: bool, trained_now: int | None = None, kept: int = 0) -> None:
    """The comparison table as a rich table (plain text off a terminal), or summary.json with --json."""
    if json_:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from dl_lab.report import TABLE_HEADER, display_cells, table_rows_from_summary

    console = Console()
    if not console.is_terminal:
        console = Console(width=220, no_color=True, highlight=False)
    table = Table(title=f"seeds {', '.join(map(str, summary['seeds']))}")
    for header in TABLE_HEADER:
        table.add_column(header, overflow="fold")  # a long variant label folds onto more lines, never cut off
    for row in table_rows_from_summary(summary):
        label, *cells = display_cells(row)
        # A grid label ("activation=sigmoid,init=normal") may break after each setting's comma.
        table.add_row(re.sub(r",(?=[\w.]+=)", ", ", label), *cells)
    console.print(table)
    for check in summary["expectations"]:
        console.print(f"expect {check['expectation']}: {'holds' if check['holds'] else 'FAILS'} ({check['detail']})",
                      markup=False)
    if trained_now is not None:
        console.print(f"{trained_now} run(s) trained, {kept} kept from before", markup=False)
    console.print(f"{summary['status']}: tables and plots in {folder}", markup=False)


@config_app.command("show")
@user_errors()
def config_show(config: ConfigOption, set_: SetOption = None) -> None:
    """Print the fully resolved config (defaults, extends and --set applied) as YAML."""
    import yaml

    from dl_lab.config_loader import load_config

    loaded = load_config(config, set_ or [])
    typer.echo(yaml.safe_dump(loaded.config.to_dict(), sort_keys=False, default_flow_style=None), nl=False)


@app.command()
def options() -> None:
    """List the registered activations, initializers, optimizers and datasets, and the presets."""
    from dl_lab.activations import ACTIVATIONS
    from dl_lab.config_loader import preset_names
    from dl_lab.data import DATASETS
    from dl_lab.initializers import INITIALIZERS
    from dl_lab.optimizers import OPTIMIZERS

    for title, registry in [("model.activation", ACTIVATIONS), ("model.init", INITIALIZERS),
                            ("optimizer.name", OPTIMIZERS), ("data.dataset", DATASETS)]:
        typer.echo(f"{title}:")
        for entry in registry:
            typer.echo(f"  {entry.name:<15} {entry.help}")
    typer.echo("presets (--config NAME):")
    typer.echo("  " + ", ".join(preset_names()))


def main() -> None:
    from dl_lab.pipes import PipeSafe

    # A closed pipe or terminal drops output instead of stopping a run (see PipeSafe).
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)
    app()
