"""The `dllab` command line. Thin: parse, load config, call the library, render.

Each command lives in its own module (train, compare, report, config); heavy imports (torch,
pydantic) happen inside commands so that `dllab --help` stays instant.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from dl_lab import signals
from dl_lab.cli import cache, compare, config, export, report, runs, train
from dl_lab.cli.common import user_errors
from dl_lab.signals import HANDLED

app = typer.Typer(
    name="dllab",
    help="Train and compare small PyTorch MLPs on MNIST from YAML configs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def _setup() -> None:
    """Train and compare small PyTorch MLPs on MNIST from YAML configs."""
    from dl_lab import signals

    signals.install()  # SIGTERM and SIGHUP end a run like Ctrl-C: status interrupted


app.command()(user_errors()(train.train))
app.command()(user_errors()(compare.compare))
app.command()(user_errors()(report.report))
config_app.command("show")(user_errors()(config.config_show))
config_app.command("schema")(user_errors()(config.config_schema))
app.command()(config.options)
runs_app = typer.Typer(help="Past runs and comparisons: list, show, diff.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
runs_app.command("ls")(user_errors()(runs.runs_ls))
runs_app.command("show")(user_errors()(runs.runs_show))
runs_app.command("diff")(user_errors()(runs.runs_diff))
export_app = typer.Typer(help="Write past runs in other tools' formats (TensorBoard).", no_args_is_help=True)
app.add_typer(export_app, name="export")
export_app.command("tensorboard")(user_errors()(export.export_tensorboard))
cache_app = typer.Typer(help="The decoded-dataset cache ($DLLAB_CACHE_DIR): list, clear.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
cache_app.command("ls")(user_errors()(cache.cache_ls))
cache_app.command("clear")(user_errors()(cache.cache_clear))


def main() -> None:
    try:
        try:
            from dl_lab.cli.pipes import PipeSafe

            # A closed pipe or terminal drops output instead of stopping a run (see PipeSafe).
            sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)
            app()
        except SystemExit as done:  # how every command ends (typer, typer.Exit); a crash keeps Python's own exit
            exit_now(done.code)
        except KeyboardInterrupt:  # Ctrl-C while starting, before a command handles it: no traceback
            print("interrupted", file=sys.stderr)
            exit_now(130)
    except KeyboardInterrupt:  # a signal in the instant between the command's end and exit_now taking over
        from dl_lab import signals

        exit_now(signals.exit_code())


def exit_now(code: int | str | None) -> None:
    """End the process as SystemExit(code) would, without the interpreter's teardown of every module:
    with torch loaded that takes 0.5-1.3 s after the command's work is done (bench/compare_breakdown.py).
    atexit handlers run and output is flushed first; files the commands write are closed by then."""
    for signum in HANDLED:  # first: the work is done and written,
        if signal.getsignal(signum) is not signal.SIG_IGN:  # so a signal now ends the exit at once, quietly
            signal.signal(signum, _exit_at_once)
    import atexit

    if isinstance(code, str):  # SystemExit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # PipeSafe: a reader that went away is not an error
    owed = signals.unanswered()  # held during a last import, its retry not yet due: it still ends the process
    os._exit(128 + owed if owed else 0 if code is None else code)


def _exit_at_once(signum: int, frame: object) -> None:
    os._exit(128 + signum)
