"""`dllab runs ls|show|diff`: past runs and comparisons at a glance, from their files (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dl_lab.cli.common import JsonOption, folder_option


def runs_ls(
    folder: Annotated[Path, typer.Argument(help="A folder of runs and comparisons.")] = Path("runs"),
    status: Annotated[
        Optional[str],
        typer.Option("--status", help="Only this status: completed, running, failed, interrupted, diverged…"),
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Only names matching this glob, e.g. 'relu*'.")] = None,
    json_: JsonOption = False,
) -> None:
    """List the runs and comparisons in FOLDER, newest first: status, name, seed, test accuracy, time."""
    from dl_lab.analysis.catalog import list_entries
    from dl_lab.errors import ConfigError

    folder = folder_option(folder)
    if not folder.is_dir():
        raise ConfigError(f"runs ls: no such folder {folder}")
    entries = list_entries(folder, status, name)
    if json_:
        typer.echo(json.dumps([entry.as_dict() for entry in entries], indent=2))
        return
    typer.echo(f"{'started':<20} {'kind':<10} {'status':<11} {'name':<24} {'seed':>5} {'test_acc':>8} {'seconds':>8}")
    for entry in entries:
        acc = "—" if entry.test_acc is None else f"{entry.test_acc:.4f}"
        seconds = "—" if entry.seconds is None else f"{entry.seconds:.1f}"
        seed = "" if entry.seed is None else str(entry.seed)
        typer.echo(
            f"{entry.started[:19]:<20} {entry.kind:<10} {entry.status:<11} {entry.name[:24]:<24} {seed:>5} "
            f"{acc:>8} {seconds:>8}"
        )
    typer.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {folder}")


def runs_show(run: Annotated[Path, typer.Argument(help="A run folder (or a comparison folder).")]) -> None:
    """Print one run's (or comparison's) summary.json."""
    from dl_lab.errors import ConfigError
    from dl_lab.runs.records import parse_comparison_summary, parse_run_summary
    from dl_lab.runs.store import read_json

    run = folder_option(run)
    data = read_json(run / "summary.json")
    record = parse_run_summary(data) or parse_comparison_summary(data)
    if record is None:
        raise ConfigError(f"runs show: {run} holds no readable summary.json of a run or comparison")
    typer.echo(json.dumps(record.to_json_dict(), indent=2))


def runs_diff(
    a: Annotated[Path, typer.Argument(help="A run folder.")], b: Annotated[Path, typer.Argument(help="Another.")]
) -> None:
    """Show the config keys and final metrics in which two runs differ."""
    from dl_lab.analysis.catalog import diff_runs
    from dl_lab.errors import ConfigError

    a, b = folder_option(a), folder_option(b)
    missing = [str(p) for p in (a, b) if not (p / "config.yaml").is_file()]
    if missing:
        raise ConfigError(f"runs diff: not a run folder (no config.yaml): {', '.join(missing)}")
    rows = diff_runs(a, b)
    width = max([len(key) for key, _, _ in rows] + [3])
    typer.echo(f"{'key':<{width}}  {a.name}  |  {b.name}")
    for key, left, right in rows:
        typer.echo(f"{key:<{width}}  {json.dumps(left)}  |  {json.dumps(right)}")
    if not rows:
        typer.echo("the two runs have the same config and final metrics")
