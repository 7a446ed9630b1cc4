"""Run folders: one per run, self-describing, written atomically.

A run folder holds config.yaml (resolved), metrics.csv (one row per finished epoch),
summary.json (status and final numbers) and env.json. summary.json says "running" from the
start and is rewritten once the run ends, so a killed process never looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from dl_lab.config import ExperimentConfig
from dl_lab.diagnostics import WarningTracker
from dl_lab.engine import FINAL_KEYS, BatchPlan, EpochMetrics, Observer, TrainResult
from dl_lab.pretraining import PretrainEpoch

OPTIONAL_COLUMNS = ["train_eval_loss", "train_eval_acc"]  # only with train.eval_train
METRIC_COLUMNS = [f.name for f in fields(EpochMetrics) if f.name not in (*OPTIONAL_COLUMNS, "diagnostics")]
PRETRAIN_COLUMNS = [f.name for f in fields(PretrainEpoch)]


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_run_dir(runs_root: Path, name: str, timestamp: bool = True, prefix: str = "") -> Path:
    """runs/<prefix><UTC timestamp>-<name>[-N] (no name: runs/<prefix><UTC timestamp>[-N]); mkdir is
    atomic, so two runs never share a folder."""
    runs_root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") if timestamp else ""
    base = prefix + "-".join(part for part in (stamp, safe_name(name) if name else "") if part)
    for attempt in range(1, 10_000):
        candidate = runs_root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {runs_root}")


def safe_name(name: str) -> str:
    """A folder-name-safe form of a run or variant name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "run"


def metrics_csv(history: Sequence[EpochMetrics], with_train_eval: bool = False) -> str:
    """One row per epoch; train-eval columns with train.eval_train, per-layer diagnostics when measured."""
    diagnostic_columns = list(history[0].diagnostics.columns()) if history and history[0].diagnostics else []
    columns = METRIC_COLUMNS + (OPTIONAL_COLUMNS if with_train_eval else []) + diagnostic_columns
    return csv_text(columns, [m.as_dict() for m in history])


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]], digits: int | None = 6) -> str:
    """CSV with a header; keys outside ``columns`` are left out, floats rounded to ``digits`` (None: kept)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, digits) if isinstance(v, float) and digits is not None else v) for k, v in row.items()})
    return out.getvalue()


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


@dataclass
class RunRecorder(Observer):
    """Engine observer that keeps a run folder current: metrics after every epoch, summary at the end."""

    folder: Path
    config: ExperimentConfig
    env: dict[str, Any]

    def __post_init__(self) -> None:
        self.history: list[EpochMetrics] = []
        self.pretraining: list[PretrainEpoch] = []
        self.warnings = WarningTracker()
        self.plan: BatchPlan | None = None
        self.started_at = _now()
        self._started = time.perf_counter()
        write_atomic(self.folder / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False, default_flow_style=None))
        write_atomic(self.folder / "env.json", dump_json(self.env))
        self._write_metrics()
        self._write_summary("running")

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        self.plan = plan

    def pretrain_epoch_done(self, record: PretrainEpoch) -> None:
        self.pretraining.append(record)
        write_atomic(self.folder / "pretrain_metrics.csv", csv_text(PRETRAIN_COLUMNS, [r.as_dict() for r in self.pretraining]))
        self._write_summary("running")

    def epoch_done(self, metrics: EpochMetrics) -> None:
        self.history.append(metrics)
        self.warnings.new(metrics.diagnostics)
        self._write_metrics()
        self._write_summary("running")

    def finish(self, result: TrainResult) -> dict[str, Any]:
        """Write the final summary from the engine's result and return it."""
        self.history = list(result.history)
        for metrics in self.history:
            self.warnings.new(metrics.diagnostics)
        self._write_metrics()
        return self._write_summary(result.status, result)

    def _write_metrics(self) -> None:
        write_atomic(self.folder / "metrics.csv", metrics_csv(self.history, self.config.train.eval_train))

    def interrupted(self) -> dict[str, Any]:
        """For an interrupt that arrived outside the engine (e.g. while writing)."""
        return self._write_summary("interrupted")

    def _write_summary(self, status: str, result: TrainResult | None = None) -> dict[str, Any]:
        final = self.history[-1] if self.history else None
        plan = result.plan if result else self.plan
        summary = {
            "name": self.config.name,
            "status": status,
            "seed": self.config.seed,
            "config_hash": self.config.experiment_hash(),
            "device": self.env["device"],
            "device_name": self.env["device_name"],
            "dataset": self.config.data.dataset,
            "epochs": len(self.history),
            "epochs_planned": self.config.train.epochs,
            "seconds": round(result.seconds if result else time.perf_counter() - self._started, 3),
            "final": {k: round(getattr(final, k), 6) for k in FINAL_KEYS} if final else None,
            "best_test_acc": round(max(m.test_acc for m in self.history), 6) if self.history else None,
            "steps_per_epoch": plan.steps if plan else None,
            "samples_per_epoch": plan.samples if plan else None,
            "dropped_per_epoch": plan.dropped if plan else None,
            "parameters": result.parameters if result else None,
            "started_at": self.started_at,
            "finished_at": _now() if status != "running" else None,
            "run_dir": str(self.folder),
            "error": (result.error.strip().splitlines()[-1] if result and result.error else None),
            "diverged_at": result.diverged_at if result else None,
            "warnings": self.warnings.all,
        }
        if final and final.diagnostics:
            summary["diagnostics"] = final.diagnostics.summary()
        if self.pretraining:
            layers = sorted({r.layer for r in self.pretraining})
            summary["pretraining"] = {
                "method": "rbm",
                # reconstruction_error[i][j]: hidden layer i+1 after pre-training epoch j+1
                "reconstruction_error": [[round(r.reconstruction_error, 6) for r in self.pretraining if r.layer == layer]
                                         for layer in layers],
                "seconds": round(sum(r.seconds for r in self.pretraining), 3),
            }
        write_atomic(self.folder / "summary.json", dump_json(summary))
        if result and result.status == "failed" and result.error:
            write_atomic(self.folder / "error.txt", result.error)
        return summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
