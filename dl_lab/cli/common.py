"""What every command shares: option types, exit codes, and turning bad input into 'error: ...' and exit 2."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from dl_lab.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_RUN_FAILED = 0, 1, 3  # 2: bad input (errors.UserError); interrupted: 128 + the signal
STATUS_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "diverged": EXIT_RUN_FAILED}

ConfigOption = Annotated[
    str,
    typer.Option(
        "--config",
        "-c",
        metavar="CONFIG",
        help="A YAML file, or a name: configs/NAME.yaml under the current folder, else a preset shipped with dl_lab.",
        autocompletion=lambda incomplete: complete_config(incomplete),
    ),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config key (dotted; value parsed as YAML), e.g. --set model.activation=sigmoid. Repeatable.",
        autocompletion=lambda incomplete: complete_key(incomplete),
    ),
]


class Engine(str, enum.Enum):
    auto = "auto"
    batched = "batched"
    sequential = "sequential"


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


def folder_option(path: Path) -> Path:
    """A path option as the user meant it: '~' expanded."""
    return path.expanduser()


ExpectOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--expect",
        metavar="EXPR",
        help="Check a result, e.g. 'relu > sigmoid' (test_acc) or 'relu.test_loss < sigmoid.test_loss'. Repeatable.",
    ),
]
AlphaOption = Annotated[
    Optional[float],
    typer.Option("--alpha", help="Also demand significance: a paired t-test p-value below ALPHA for every --expect."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print summary.json to stdout (progress stays on stderr).")]


def check_alpha(alpha: float | None) -> None:
    from dl_lab.errors import ConfigError

    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"--alpha: must be between 0 and 1 (got {alpha})")


WideOption = Annotated[
    bool,
    typer.Option(
        "--wide", help="Show every column of the comparison table (table.md has them all) instead of the main five."
    ),
]


def complete_config(incomplete: str) -> list[str]:
    """Shell completion after --config: preset names (and configs/NAME under the current folder)."""
    from dl_lab.config.loader import preset_names

    local = (
        sorted(str(p.relative_to("configs").with_suffix("")) for p in Path("configs").rglob("*.yaml"))
        if Path("configs").is_dir()
        else []
    )
    return [name for name in dict.fromkeys([*local, *preset_names()]) if name.startswith(incomplete)]


def complete_key(incomplete: str) -> list[str]:
    """Shell completion after --set: dotted config keys ('model.activation='), then an option's choices."""
    from dl_lab.config import choices
    from dl_lab.config.diff import flat
    from dl_lab.config.schema import ExperimentConfig

    named = {
        "model.activation": choices.ACTIVATIONS,
        "model.init": choices.INITIALIZERS,
        "optimizer.name": choices.OPTIMIZERS,
        "data.dataset": choices.DATASETS,
    }
    key, sep, value = incomplete.partition("=")
    if sep:
        table = named.get(key)
        return [f"{key}={name}" for name in (table.names() if table else []) if name.startswith(value)]
    keys = flat(ExperimentConfig(name="x").to_dict())
    return [f"{key}=" for key in keys if key.startswith(incomplete)]
