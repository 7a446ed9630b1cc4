"""Load finished runs for analysis: a comparison's planned runs, or loose `dllab train` run folders. Torch-free."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dl_lab.config.loader import load_config
from dl_lab.config.schema import ExperimentConfig
from dl_lab.runs.comparison import read_plan, survey
from dl_lab.runs.records import FinalMetrics, RunSummary
from dl_lab.runs.store import read_run_summary, run_status


@dataclass(frozen=True)
class RunRecord:
    seed: int
    summary: RunSummary
    metrics: list[dict[str, float]]  # metrics.csv rows, by column

    @property
    def final(self) -> FinalMetrics:
        assert self.summary.final is not None  # read_run keeps completed runs with final metrics only
        return self.summary.final


@dataclass
class VariantResult:
    label: str
    config: ExperimentConfig
    runs: list[RunRecord] = field(default_factory=list)  # completed runs, by seed

    def finals(self, metric: str, seeds: Sequence[int] | None = None) -> list[float]:
        return [getattr(r.final, metric) for r in self.runs if seeds is None or r.seed in seeds]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def read_run(folder: Path) -> RunRecord | None:
    """A completed run folder, or None for anything else (running, failed, interrupted, unreadable)."""
    summary = read_run_summary(folder)
    if summary is None or summary.status != "completed" or summary.final is None:
        return None
    try:
        with (folder / "metrics.csv").open(newline="", encoding="utf-8") as handle:
            metrics = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
        return RunRecord(summary.seed, summary, metrics)
    except (OSError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Loaded:
    """What a report is built from: each variant with its completed runs, the seeds, and what is missing."""

    results: list[VariantResult]
    seeds: list[int]
    unfinished: list[str]  # 'relu-seed778: interrupted', one per planned or found run that did not complete


def load_compare(folder: Path) -> Loaded:
    """Each planned variant with its completed runs (compare.survey: planned folders, configs that match)."""
    plan = read_plan(folder)
    found = survey(folder, plan)
    results = {variant.label: VariantResult(variant.label, variant.config) for variant in plan.variants}
    unfinished = []
    for index, run in enumerate(plan.runs):
        record = read_run(folder / run.folder) if index in found.done else None
        if record is not None:
            results[run.variant.label].runs.append(record)
            continue
        if index in found.done:
            why = "completed, but its summary.json or metrics.csv cannot be read"
        else:
            why = found.mismatched.get(index) or run_status(folder / run.folder) or "not started"
        unfinished.append(f"{run.folder}: {why}")
    for result in results.values():
        result.runs.sort(key=lambda r: r.seed)
    return Loaded(list(results.values()), list(plan.seeds), unfinished)


def load_loose_runs(folders: Sequence[Path]) -> Loaded:
    """Train runs grouped by (name, config hash); seeds are the replicates."""
    groups: dict[tuple[str, str], VariantResult] = {}
    unfinished: list[str] = []
    for folder in folders:
        candidates = (
            [folder] if (folder / "summary.json").is_file() else sorted(p.parent for p in folder.glob("*/summary.json"))
        )
        for run_folder in candidates:
            record = read_run(run_folder)
            if record is None:
                status = run_status(run_folder)
                if status is not None:
                    unfinished.append(f"{run_folder}: {status}")
                continue
            config = load_config(str(run_folder / "config.yaml")).config
            key = (config.name, record.summary.config_hash or config.experiment_hash())
            groups.setdefault(key, VariantResult(config.name, config)).runs.append(record)
    labels = [name for name, _ in groups]
    for (name, digest), result in groups.items():
        if labels.count(name) > 1:
            result.label = f"{name}#{digest[:6]}"
        result.runs.sort(key=lambda r: r.seed)
    results = list(groups.values())
    return Loaded(results, sorted({seed for result in results for seed in result.seeds}), unfinished)
