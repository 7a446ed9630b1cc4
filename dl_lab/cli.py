"""The `dllab` command line. Thin: parse, load config, call the library, render.

Heavy imports (torch, pydantic) happen inside commands so that `dllab --help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer

from dl_lab.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STATUS_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}

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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input becomes 'error: ...' on stderr and exit code 2, never a traceback."""
    try:
        yield
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def train(
    config: ConfigOption,
    set_: SetOption = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders are created.")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout (progress stays on stderr).")] = False,
) -> None:
    """Train one model from a config; write config.yaml, metrics.csv, summary.json and env.json to a new run folder.

    Exit codes: 0 completed, 1 failed, 2 bad input (nothing written), 130 interrupted.
    """
    from rich.console import Console

    from dl_lab.experiment import prepare, run_one
    from dl_lab.progress import progress_for

    with user_errors():
        prepared = prepare(config, set_ or [], os.environ)
    console = Console(stderr=True)
    with progress_for(console, sys.stderr, str(prepared.device)) as progress:
        summary = run_one(prepared, runs_dir, progress)
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(_result_text(summary))
    if summary["status"] == "failed":
        typer.echo(f"error: training failed: {summary['error']} (traceback in {summary['run_dir']}/error.txt)", err=True)
    raise typer.Exit(STATUS_EXIT[summary["status"]])


def _result_text(summary: dict) -> str:
    final = summary["final"]
    numbers = (f"test_acc {final['test_acc']:.4f}  test_loss {final['test_loss']:.4f}  " if final else "")
    return (f"{summary['status']}: {summary['name']}  {numbers}{summary['epochs']}/{summary['epochs_planned']} epochs "
            f"in {summary['seconds']:.1f}s on {summary['device']}\nrun folder: {summary['run_dir']}")


@config_app.command("show")
def config_show(config: ConfigOption, set_: SetOption = None) -> None:
    """Print the fully resolved config (defaults, extends and --set applied) as YAML."""
    import yaml

    from dl_lab.config_loader import load_config

    with user_errors():
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
    app()
