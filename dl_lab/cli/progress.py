"""Draw training progress: a live rich display on a terminal, plain lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dl_lab.training.events import Observer, Run, run_key
from dl_lab.training.results import (
    BatchPlan,
    EpochMetrics,
    PretrainEpoch,
    TrainResult,
    WarningTracker,
)

REFRESH_SECONDS = 0.2  # the running loss is read from the device at most this often


def epoch_line(metrics: EpochMetrics, epochs: int) -> str:
    width = len(str(epochs))
    line = (
        f"epoch {metrics.epoch:>{width}}/{epochs}  train_loss {metrics.train_loss:.4f}  "
        f"train_acc {metrics.train_acc:.4f}  test_loss {metrics.test_loss:.4f}  "
        f"test_acc {metrics.test_acc:.4f}"
    )
    if metrics.train_eval_acc is not None:
        line += f"  train_eval_acc {metrics.train_eval_acc:.4f}"
    return f"{line}  {metrics.seconds:.2f}s"


class LineProgress(Observer):
    """One line when a run starts, per pre-training epoch and per epoch; subclasses say where.

    With ``total_runs`` (a comparison) every line is prefixed with the run's place, e.g. '[3/10] relu seed 778'.
    """

    def __init__(self, device: str, total_runs: int | None = None) -> None:
        self.device, self.total_runs, self.started = device, total_runs, 0
        self.warnings: dict[tuple[str, int], WarningTracker] = {}  # per run: runs of a stack interleave
        self.prefixes: dict[tuple[str, int], str] = {}

    def emit(self, line: str, run: Run) -> None:
        raise NotImplementedError

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        key = run_key(run)
        self.started += 1
        self.warnings[key] = WarningTracker()
        self.prefixes[key] = (
            f"[{self.started}/{self.total_runs}] {run.name} seed {run.seed}: " if self.total_runs else ""
        )
        self.emit(
            f"training {run.name}: {run.train.epochs} epochs x {plan.steps} steps "
            f"(batch {plan.batch_size}) on {self.device}"
            + (", compiled (the first steps wait for torch.compile)" if run.train.compile else ""),
            run,
        )

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        self.emit(
            f"rbm layer {record.layer} epoch {record.epoch}/{run.model.rbm.epochs}  "
            f"reconstruction_error {record.reconstruction_error:.5f}  {record.seconds:.2f}s",
            run,
        )

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        self.emit(epoch_line(metrics, run.train.epochs), run)
        for warning in self.warnings[run_key(run)].new(metrics.diagnostics):
            self.emit(f"warning: {warning}", run)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class PlainProgress(LineProgress):
    """Plain lines, no control codes."""

    def __init__(self, stream: IO[str], device: str, total_runs: int | None = None) -> None:
        super().__init__(device, total_runs)
        self.stream = stream

    def emit(self, line: str, run: Run) -> None:
        print(self.prefixes[run_key(run)] + line, file=self.stream, flush=True)


class TerminalProgress(LineProgress):
    """Epoch and batch bars with the running loss; finished epochs scroll above the bars.

    For a comparison a third bar counts finished runs, with the current variant and an ETA.
    """

    def __init__(self, console: Console, device: str, total_runs: int | None = None) -> None:
        super().__init__(device, total_runs)
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.steps = 0
        self._last_refresh = 0.0

    def emit(self, line: str, run: Run) -> None:
        self.console.print(self.prefixes[run_key(run)] + line, highlight=False, markup=False)

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        super().run_started(run, plan)
        self.steps = plan.steps
        if self.total_runs and self.started == 1:
            self.runs_task = self.progress.add_task("runs   ", total=self.total_runs, info="")
        if self.total_runs:
            self.progress.update(self.runs_task, info=f"{run.name} seed {run.seed}")
            for task in self.progress.task_ids[1:]:
                self.progress.remove_task(task)
        self.epoch_task = self.progress.add_task("epochs ", total=run.train.epochs, info="")
        self.batch_task = self.progress.add_task("batches", total=self.steps, info="")

    def run_done(self, run: Run, result: TrainResult) -> None:
        if self.total_runs:
            self.progress.advance(self.runs_task)

    def step_done(self, runs: Sequence[Run], epoch: int, step: int, losses: Any, samples: int) -> None:
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_SECONDS and step < self.steps:
            return
        self._last_refresh = now
        running = losses.mean().item()  # host sync, throttled to a few per second
        self.progress.update(self.batch_task, completed=step, info=f"loss {running:.4f}")

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        super().epoch_done(run, metrics)
        self.progress.update(self.epoch_task, completed=metrics.epoch, info=f"test_acc {metrics.test_acc:.4f}")
        self.progress.reset(self.batch_task, total=self.steps, info="")

    def __enter__(self) -> TerminalProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def progress_for(console: Console, stream: IO[str], device: str, total_runs: int | None = None) -> LineProgress:
    if console.is_terminal:
        return TerminalProgress(console, device, total_runs)
    return PlainProgress(stream, device, total_runs)
