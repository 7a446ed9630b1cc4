"""The comparison table on the terminal (rich; plain text off a terminal), or summary.json with --json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from dl_lab.runs.records import ComparisonSummary


# The terminal's default columns: what a person reads first. --wide shows every column of table.md.
COMPACT = {"variant": 0, "test_acc (mean ± std)": 3, "Δ test_acc vs baseline": 9, "p (paired t)": 10, "verdict": 11}
COMPACT_HEADERS = {"test_acc (mean ± std)": "test_acc", "Δ test_acc vs baseline": "Δ test_acc", "p (paired t)": "p"}
GRADIENT = ("grad L1/Llast", 7)  # shown by default when some variant's gradients vanish or explode


def render_comparison(
    summary: ComparisonSummary,
    folder: Path,
    json_: bool,
    trained_now: int | None = None,
    kept: int = 0,
    wide: bool = False,
) -> None:
    """The comparison table on the terminal, or summary.json with --json. By default the few columns
    read first (without wrapping on an 80-column terminal); ``wide``: every column, as in table.md."""
    if json_:
        typer.echo(json.dumps(summary.to_json_dict(), indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from dl_lab.analysis.report import TABLE_HEADER, display_cells, table_rows_from_summary

    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: no colour, and the wide table does not wrap
        console = Console(width=220 if wide else None, no_color=True, highlight=False)
    rows = []
    for cells in (display_cells(row) for row in table_rows_from_summary(summary)):
        # A grid label ("activation=sigmoid,init=normal") may break after each setting's comma.
        cells[0] = re.sub(r",(?=[\w.]+=)", ", ", cells[0])
        if not wide:
            cells[-1] = re.sub(r" \(p=[^)]*\)$", "", cells[-1])  # the p column already says it
        rows.append(cells)
    if wide:
        columns = list(enumerate(TABLE_HEADER))
        table = Table(title=f"seeds {', '.join(map(str, summary.seeds))}")
    else:
        columns = [(index, COMPACT_HEADERS.get(header, header)) for header, index in COMPACT.items()]
        with_gradient = [*columns[:2], (GRADIENT[1], "grad ratio"), *columns[2:]]
        if any(_notable(v.aggregates.grad_ratio_first_last) for v in summary.variants) and (
            _width(with_gradient, rows) <= console.width
        ):
            columns = with_gradient  # only where it fits: --wide always has it
        table = Table(title=f"seeds {', '.join(map(str, summary.seeds))}", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in columns:
        # A long variant label folds onto more lines, never cut off; other cells stay on one line.
        table.add_column(header, overflow="fold", no_wrap=index != 0 and not wide)
    for cells in rows:
        table.add_row(*[cells[index] for index, _ in columns])
    console.print(table)
    if not wide:
        console.print(f"every column: --wide, or table.md in {folder}", markup=False)
    for check in summary.expectations:
        console.print(
            f"expect {check.expectation}: {'holds' if check.holds else 'FAILS'} ({check.detail})", markup=False
        )
    if trained_now is not None:
        console.print(f"{trained_now} run(s) trained, {kept} kept from before", markup=False)
    console.print(f"{summary.status}: tables and plots in {folder}", markup=False)


def _width(columns: list[tuple[int, str]], rows: list[list[str]]) -> int:
    """Characters the compact table needs on one line per row (two between columns)."""
    return sum(max(len(header), *(len(cells[index]) for cells in rows)) for index, header in columns) + 2 * (
        len(columns) - 1
    )


def _notable(ratio: float | None) -> bool:
    """A first-to-last layer gradient ratio that the diagnostics would warn about."""
    from dl_lab.training.results import EXPLODING_RATIO, VANISHING_RATIO

    return ratio is not None and not VANISHING_RATIO <= ratio <= EXPLODING_RATIO
