"""`dllab export tensorboard`: TensorBoard event files for past runs and comparisons, from their files.

One TensorBoard run per dllab run, named so a comparison's variants and seeds filter easily:
``<out>/<comparison folder>/<variant>/seed<seed>`` for a comparison's runs and
``<out>/<run folder>`` for a `dllab train` run. Each run's events are written into a temporary folder
and renamed into place, so an interrupted export leaves no half-written run; a run already exported
(its target exists) is left alone and reported. Running runs are skipped: export them when they end.
Reads metrics.csv, pretrain_metrics.csv, summary.json and config.yaml (runs/tensorboard.py says what
the events hold).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dl_lab.analysis.catalog import config_of
from dl_lab.errors import ConfigError
from dl_lab.runs import tensorboard
from dl_lab.runs.comparison import read_plan
from dl_lab.runs.records import RunSummary
from dl_lab.runs.store import (
    FOLDER_MODE,
    PLAN_FILE,
    make_folder,
    read_run_summary,
    run_status,
    safe_name,
    temporary_beside,
)


@dataclass
class Exported:
    written: list[tuple[Path, Path]] = field(default_factory=list)  # (run folder, its TensorBoard folder)
    skipped: list[str] = field(default_factory=list)  # 'runs/x: why', one per run left out


def export_tensorboard(folders: Sequence[Path], out: Path) -> Exported:
    """Write the events of every run in ``folders`` (runs, comparisons, or folders of them) under ``out``."""
    tensorboard.require("dllab export tensorboard")
    targets = [target for folder in folders for target in _targets(folder, out)]
    if not targets:
        raise ConfigError(
            f"export tensorboard: no runs in {', '.join(map(str, folders))}; allowed: a run folder, a "
            "comparison folder, or a folder holding them (e.g. runs)"
        )
    make_folder(out, "--out")
    result = Exported()
    for run, name in targets:
        summary = read_run_summary(run)
        status = run_status(run, summary) if summary else None
        why = _why_not(run, status, out / name)
        if why:
            result.skipped.append(f"{run}: {why}")
            continue
        assert summary is not None and status is not None  # _why_not says so
        _export_run(run, summary, status, out / name)
        result.written.append((run, out / name))
    return result


def _targets(folder: Path, out: Path, nested: bool = False) -> Iterator[tuple[Path, Path]]:
    """(run folder, TensorBoard run name) for the runs ``folder`` holds."""
    if (folder / PLAN_FILE).is_file():
        plan = read_plan(folder)
        for run in plan.runs:
            yield folder / run.folder, Path(folder.name) / safe_name(run.variant.label) / f"seed{run.seed}"
    elif (folder / "summary.json").is_file():
        yield folder, Path(folder.name)
    elif folder.is_dir() and not nested:
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.resolve() != out.resolve():
                yield from _targets(child, out, nested=True)
    elif not nested:
        raise ConfigError(
            f"export tensorboard: {folder}: no such folder; allowed: a run or comparison folder, "
            "or a folder holding them"
        )


def _why_not(run: Path, status: str | None, target: Path) -> str | None:
    if status is None:
        return "not started (no summary.json)"
    if status == "running":
        return "still running; export it when it has ended"
    if not (run / "metrics.csv").is_file():
        return "no metrics.csv"
    if target.exists():
        return f"already exported to {target} (move that folder away to export again)"
    return None


def _export_run(run: Path, summary: RunSummary, status: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with temporary_beside(target, folder=True) as staging:  # removed if the export fails or is interrupted
        events = tensorboard.EventLog(staging)
        for row in _rows(run / "pretrain_metrics.csv"):
            events.pretrain_epoch(int(row["layer"]), int(row["epoch"]), float(row["reconstruction_error"]))
        for row in _rows(run / "metrics.csv"):
            events.epoch(row)
        events.close(
            tensorboard.run_hparams(config_of(run), status),
            tensorboard.final_metrics(summary),
        )
        os.chmod(staging, FOLDER_MODE)  # mkdtemp makes 0700 folders
        os.rename(staging, target)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
