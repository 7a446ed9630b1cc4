"""Past work at a glance: the runs and comparisons in a folder, one entry each, newest first. Torch-free.

Reads only summary.json, plan.json and config.yaml (through the typed records), so a folder of a
thousand runs lists in well under a second (bench/runs_ls.py).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dl_lab.config.diff import flat
from dl_lab.runs.records import parse_comparison_summary
from dl_lab.runs.store import PLAN_FILE, read_json, read_run_summary, run_status


@dataclass(frozen=True)
class Entry:
    kind: str  # "run" or "comparison"
    folder: str
    name: str
    status: str  # the true status: a killed writer reads interrupted
    seed: int | None  # runs only
    test_acc: float | None  # a run's final test accuracy; a comparison's best variant's mean
    seconds: float | None
    started: str  # ISO time (the run's start; a comparison's folder time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_entries(root: Path, status: str | None = None, name: str | None = None) -> list[Entry]:
    """Every run folder and comparison folder directly in ``root``, filtered, newest first."""
    entries = [entry for entry in (_entry(path) for path in root.iterdir() if path.is_dir()) if entry is not None]
    if status:
        entries = [entry for entry in entries if entry.status == status]
    if name:
        entries = [entry for entry in entries if fnmatch.fnmatchcase(entry.name, name)]
    return sorted(entries, key=lambda entry: (entry.started, entry.folder), reverse=True)


def _entry(path: Path) -> Entry | None:
    if (path / PLAN_FILE).is_file():
        return _comparison(path)
    summary = read_run_summary(path)
    if summary is None:
        return None
    final = summary.final
    return Entry(
        "run",
        str(path),
        summary.name,
        run_status(path, summary) or summary.status,  # one read of summary.json per run
        summary.seed,
        final.test_acc if final else None,
        summary.seconds,
        summary.started_at or "",
    )


def _comparison(path: Path) -> Entry:
    summary = parse_comparison_summary(read_json(path / "summary.json"))
    started = _folder_time(path)
    name = re.sub(r"^compare-\d{8}-\d{6}(-\d+)?-?", "", path.name) or path.name  # the variants' names
    if summary is None:  # planned, and training or stopped before its first report
        statuses = {run_status(run) for run in path.iterdir() if run.is_dir() and not run.name.startswith(".")}
        status = "running" if "running" in statuses else "interrupted"
        return Entry("comparison", str(path), name, status, None, None, None, started)
    best = next((v for v in summary.variants if v.label == summary.best), None)
    seconds = [
        v.aggregates.seconds_per_run * v.aggregates.seeds for v in summary.variants if v.aggregates.seconds_per_run
    ]
    return Entry(
        "comparison",
        str(path),
        name,
        summary.status,
        None,
        best.aggregates.test_acc_mean if best else None,
        round(sum(seconds), 3) if seconds else None,
        started,
    )


def _folder_time(path: Path) -> str:
    """'compare-20261126-182135-relu' -> '2026-11-26T18:21:35+00:00' (the tool names folders in UTC)."""
    parts = path.name.split("-")
    stamp = next((f"{a}{b}" for a, b in zip(parts, parts[1:]) if len(a) == 8 and len(b) == 6 and (a + b).isdigit()), "")
    if not stamp:
        return ""
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:{stamp[12:14]}+00:00"


def config_of(run: Path) -> dict[str, Any]:
    """A run's config.yaml, flattened to dotted keys ({} when unreadable)."""
    try:
        data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return flat(data) if isinstance(data, dict) else {}


def diff_runs(a: Path, b: Path) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every config key and final metric that differs."""
    left, right = config_of(a), config_of(b)
    rows = [
        (key, left.get(key), right.get(key))
        for key in dict.fromkeys([*left, *right])
        if left.get(key) != right.get(key)
    ]
    finals = [read_run_summary(run) for run in (a, b)]
    metrics = [summary.final.model_dump() if summary and summary.final else {} for summary in finals]
    for key in dict.fromkeys([*metrics[0], *metrics[1]]):
        if metrics[0].get(key) != metrics[1].get(key):
            rows.append((f"final.{key}", metrics[0].get(key), metrics[1].get(key)))
    return rows
