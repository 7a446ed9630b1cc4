"""The comparison table on the terminal (rich; plain text off a terminal), or summary.json with --json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from dl_lab.runs.records import ComparisonSummary


def render_comparison(
    summary: ComparisonSummary, folder: Path, json_: bool, trained_now: int | None = None, kept: int = 0
) -> None:
    """The comparison table as a rich table (plain text off a terminal), or summary.json with --json."""
    if json_:
        typer.echo(json.dumps(summary.to_json_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from dl_lab.analysis.report import (
        TABLE_HEADER,
        display_cells,
        table_rows_from_summary,
    )

    console = Console()
    if not console.is_terminal:
        console = Console(width=220, no_color=True, highlight=False)
    table = Table(title=f"seeds {', '.join(map(str, summary.seeds))}")
    for header in TABLE_HEADER:
        table.add_column(header, overflow="fold")  # a long variant label folds onto more lines, never cut off
    for row in table_rows_from_summary(summary):
        label, *cells = display_cells(row)
        # A grid label ("activation=sigmoid,init=normal") may break after each setting's comma.
        table.add_row(re.sub(r",(?=[\w.]+=)", ", ", label), *cells)
    console.print(table)
    for check in summary.expectations:
        console.print(
            f"expect {check.expectation}: {'holds' if check.holds else 'FAILS'} ({check.detail})", markup=False
        )
    if trained_now is not None:
        console.print(f"{trained_now} run(s) trained, {kept} kept from before", markup=False)
    console.print(f"{summary.status}: tables and plots in {folder}", markup=False)
