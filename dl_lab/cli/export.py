"""`dllab export tensorboard`: TensorBoard event files for past runs and comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dl_lab.cli.common import folder_option


def export_tensorboard(
    folders: Annotated[
        list[Path],
        typer.Argument(metavar="FOLDER", help="Run folders, comparison folders, or folders holding them (e.g. runs)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where the TensorBoard runs go (view with: tensorboard --logdir OUT).")
    ] = Path("runs/tensorboard"),
    json_: Annotated[bool, typer.Option("--json", help="Print what was written and skipped as JSON.")] = False,
) -> None:
    r"""Write TensorBoard event files for finished runs and comparisons.

    One TensorBoard run per dllab run, named <comparison>/<variant>/seed<N> (or the run folder's
    name), with every metrics.csv column per epoch and the config as hparams with the final metrics.
    Needs the tensorboard extra: pip install "dl_lab\[tensorboard]"."""
    from dl_lab.analysis.export import export_tensorboard as export

    out = folder_option(out)
    result = export([folder_option(folder) for folder in folders], out)
    if json_:
        written = [{"run": str(run), "events": str(events)} for run, events in result.written]
        typer.echo(json.dumps({"out": str(out), "written": written, "skipped": result.skipped}, indent=2))
        return
    for line in result.skipped:
        typer.echo(f"skipped {line}", err=True)
    runs = len(result.written)
    typer.echo(f"exported {runs} run{'' if runs == 1 else 's'} to {out}; view with: tensorboard --logdir {out}")
