"""Run folders: one per run, self-describing, written atomically.

A run folder holds config.yaml (resolved), metrics.csv (one row per finished epoch),
summary.json (status and final numbers) and env.json. summary.json says "running" from the
start and is rewritten once the run ends, so a killed process never looks finished. With
train.tensorboard the folder also holds the run's TensorBoard event file (runs/tensorboard.py),
written at each epoch boundary.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from dl_lab.config.schema import ExperimentConfig
from dl_lab.runs.locks import FolderLock
from dl_lab.runs.records import (
    DiagnosticsSummary,
    FinalMetrics,
    PretrainingSummary,
    RunSummary,
)
from dl_lab.runs.store import csv_text, dump_json, write_atomic, write_in_place
from dl_lab.signals import deferred
from dl_lab.training.events import Observer, Run
from dl_lab.training.results import (
    FINAL_KEYS,
    BatchPlan,
    EpochMetrics,
    PretrainEpoch,
    TrainResult,
    WarningTracker,
)

OPTIONAL_COLUMNS = ["train_eval_loss", "train_eval_acc"]  # only with train.eval_train
METRIC_COLUMNS = [f.name for f in fields(EpochMetrics) if f.name not in (*OPTIONAL_COLUMNS, "diagnostics")]
PRETRAIN_COLUMNS = [f.name for f in fields(PretrainEpoch)]


def metrics_csv(history: Sequence[EpochMetrics], with_train_eval: bool = False) -> str:
    """One row per epoch; train-eval columns with train.eval_train, per-layer diagnostics when measured."""
    diagnostic_columns = list(history[0].diagnostics.columns()) if history and history[0].diagnostics else []
    columns = METRIC_COLUMNS + (OPTIONAL_COLUMNS if with_train_eval else []) + diagnostic_columns
    return csv_text(columns, [m.as_dict() for m in history])


@dataclass
class RunRecorder(Observer):
    """Engine observer that keeps a run folder current: metrics after every epoch, summary at the end.

    The summary says ``running`` from the first moment; the final write (finish, interrupted or
    failed) happens once, with termination signals held until it is done. With ``lock`` the folder
    is locked for as long as the run writes (a lone `dllab train` run; a comparison's runs live
    under the comparison's lock), so a reader can tell a killed run from a live one."""

    folder: Path
    config: ExperimentConfig
    env: dict[str, Any]
    lock: bool = False

    def __post_init__(self) -> None:
        self.history: list[EpochMetrics] = []
        self.pretraining: list[PretrainEpoch] = []
        self.warnings = WarningTracker()
        self.plan: BatchPlan | None = None
        self.started_at = _now()
        self._started = time.perf_counter()
        self._lock = FolderLock(self.folder, "run folder").acquire() if self.lock else None
        self.final: RunSummary | None = None  # the summary written when the run ended
        self._written = 0  # epochs in metrics.csv
        self.events = None  # the TensorBoard event log (train.tensorboard)
        try:
            write_atomic(
                self.folder / "config.yaml",
                yaml.safe_dump(self.config.to_dict(), sort_keys=False, default_flow_style=None),
            )
            write_atomic(self.folder / "env.json", dump_json(self.env))
            self._write_metrics()
            self._write_summary("running")
            if self.config.train.tensorboard:
                from dl_lab.runs.tensorboard import EventLog  # tensorboardX (and torch): only when asked for

                self.events = EventLog(self.folder)
        except Exception:
            self.failed(traceback.format_exc())
            raise

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        self.plan = plan

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        self.pretraining.append(record)
        self._to_events(lambda events: events.pretrain_epoch(record.layer, record.epoch, record.reconstruction_error, True))
        write_atomic(
            self.folder / "pretrain_metrics.csv", csv_text(PRETRAIN_COLUMNS, [r.as_dict() for r in self.pretraining])
        )
        self._write_summary("running")

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        self.history.append(metrics)
        self.warnings.new(metrics.diagnostics)
        self._write_metrics()
        self._write_summary("running")
        self._to_events(lambda events: events.epoch(metrics.as_dict(), flush=True))

    def finish(self, result: TrainResult) -> RunSummary:
        """Write the final metrics and summary from the engine's result and return the summary."""
        if self.final is None:
            self.history = list(result.history)
            for metrics in self.history:
                self.warnings.new(metrics.diagnostics)
        return self._close(result.status, result)

    def interrupted(self) -> RunSummary:
        """For an interrupt that arrived outside the engine (e.g. while writing)."""
        return self._close("interrupted")

    def failed(self, error: str) -> RunSummary:
        """For an exception outside the engine (e.g. the disk filled up while writing)."""
        return self._close("failed", error=error)

    def _close(self, status: str, result: TrainResult | None = None, error: str | None = None) -> RunSummary:
        """The final write, once: metrics, then the summary (the commit point), then error.txt.

        If writing fails (disk full...) the run is marked failed with whatever space is left: the
        summary is rewritten in place, in the space the running summary held."""
        if self.final is not None:
            return self.final
        with deferred():
            try:
                self._write_metrics()
                self.final = self._write_summary(status, result, error)
            except Exception:
                error = traceback.format_exc()
                del self.history[self._written :]  # the summary describes the epochs metrics.csv holds
                self.final = self._last_resort(self._summary("failed", result, error), error)
            finally:
                self._close_events()
                if self._lock is not None:
                    self._lock.release(remove=True)  # a run folder has one writer, ever
        return self.final

    def _to_events(self, write: Any) -> None:
        """Write to the event log, if there is one. Events are a view of the run's files: an error
        writing them (disk full...) stops the events, never the run."""
        if self.events is None:
            return
        try:
            write(self.events)
        except Exception:
            with contextlib.suppress(Exception):
                self.events.stop()
            self.events = None

    def _close_events(self) -> None:
        """The event log's epochs (those the engine's result brought, if the events missed them), then
        the hparams with the final metrics. Events are a view: failing to write them fails no run."""
        if self.events is None or self.final is None:
            return
        from dl_lab.runs.tensorboard import final_metrics, run_hparams

        with contextlib.suppress(Exception):
            for metrics in self.history[self.events.epochs :]:
                self.events.epoch(metrics.as_dict())
            self.events.close(run_hparams(self.config.to_dict(), self.final.status), final_metrics(self.final))
        self.events = None

    def _last_resort(self, summary: RunSummary, error: str) -> RunSummary:
        """Write a failed summary however possible: atomically, else a short one in place (a full disk
        has no room for a second file but has the room the old summary held); then error.txt."""
        try:
            write_atomic(self.folder / "summary.json", dump_json(summary.to_json_dict()))
        except OSError:
            short = RunSummary(
                schema_version=summary.schema_version,
                name=summary.name,
                status=summary.status,
                seed=summary.seed,
                epochs=summary.epochs,
                run_dir=summary.run_dir,
                error=summary.error,
                finished_at=summary.finished_at,
            )
            with contextlib.suppress(OSError):
                write_in_place(self.folder / "summary.json", dump_json(short.to_json_dict()))
        with contextlib.suppress(OSError):
            write_atomic(self.folder / "error.txt", error)
        return summary

    def _write_metrics(self) -> None:
        write_atomic(self.folder / "metrics.csv", metrics_csv(self.history, self.config.train.eval_train))
        self._written = len(self.history)

    def _write_summary(self, status: str, result: TrainResult | None = None, error: str | None = None) -> RunSummary:
        summary = self._summary(status, result, error)
        write_atomic(self.folder / "summary.json", dump_json(summary.to_json_dict()))
        traceback_text = error or (result.error if result and result.status == "failed" else None)
        if status == "failed" and traceback_text:
            write_atomic(self.folder / "error.txt", traceback_text)
        return summary

    def _summary(self, status: str, result: TrainResult | None, error: str | None = None) -> RunSummary:
        final = self.history[-1] if self.history else None
        plan = result.plan if result else self.plan
        error = error or (result.error if result else None)
        fields: dict[str, Any] = dict(  # noqa: C408 (keyword form reads like the file)
            name=self.config.name,
            status=status,
            seed=self.config.seed,
            config_hash=self.config.experiment_hash(),
            device=self.env["device"],
            device_name=self.env["device_name"],
            dataset=self.config.data.dataset,
            epochs=len(self.history),
            epochs_planned=self.config.train.epochs,
            seconds=round(result.seconds if result else time.perf_counter() - self._started, 3),
            final=FinalMetrics(**{k: round(getattr(final, k), 6) for k in FINAL_KEYS}) if final else None,
            best_test_acc=round(max(m.test_acc for m in self.history), 6) if self.history else None,
            steps_per_epoch=plan.steps if plan else None,
            samples_per_epoch=plan.samples if plan else None,
            dropped_per_epoch=plan.dropped if plan else None,
            parameters=result.parameters if result else None,
            started_at=self.started_at,
            finished_at=_now() if status != "running" else None,
            run_dir=str(self.folder),
            error=error.strip().splitlines()[-1] if error else None,
            diverged_at=result.diverged_at if result else None,
            warnings=self.warnings.all,
        )
        if final and final.diagnostics:
            fields["diagnostics"] = DiagnosticsSummary.model_validate(final.diagnostics.summary())
        if self.pretraining:
            layers = sorted({r.layer for r in self.pretraining})
            fields["pretraining"] = PretrainingSummary(
                method="rbm",
                reconstruction_error=[
                    [round(r.reconstruction_error, 6) for r in self.pretraining if r.layer == layer] for layer in layers
                ],
                seconds=round(sum(r.seconds for r in self.pretraining), 3),
            )
        return RunSummary(**fields)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
