"""Draw training progress: a live rich display on a terminal, plain lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dl_lab.config import ExperimentConfig
from dl_lab.engine import BatchPlan, EpochMetrics

REFRESH_SECONDS = 0.2  # the running loss is read from the device at most this often


def epoch_line(metrics: EpochMetrics, epochs: int) -> str:
    width = len(str(epochs))
    return (f"epoch {metrics.epoch:>{width}}/{epochs}  train_loss {metrics.train_loss:.4f}  "
            f"train_acc {metrics.train_acc:.4f}  test_loss {metrics.test_loss:.4f}  "
            f"test_acc {metrics.test_acc:.4f}  {metrics.seconds:.2f}s")


def start_line(config: ExperimentConfig, plan: BatchPlan, device: str) -> str:
    return (f"training {config.name}: {config.train.epochs} epochs x {plan.steps} steps "
            f"(batch {plan.batch_size}) on {device}")


class PlainProgress:
    """One line when the run starts and one per epoch; no control codes."""

    def __init__(self, stream: IO[str], device: str) -> None:
        self.stream, self.device, self.epochs = stream, device, 0

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        self.epochs = config.train.epochs
        print(start_line(config, plan, self.device), file=self.stream, flush=True)

    def step_done(self, epoch: int, step: int, loss_sum: Any, samples: int) -> None:
        pass

    def epoch_done(self, metrics: EpochMetrics) -> None:
        print(epoch_line(metrics, self.epochs), file=self.stream, flush=True)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class TerminalProgress:
    """Epoch and batch bars with the running loss; finished epochs scroll above the bars."""

    def __init__(self, console: Console, device: str) -> None:
        self.console, self.device = console, device
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.epochs = self.steps = 0
        self._last_refresh = 0.0

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        self.epochs, self.steps = config.train.epochs, plan.steps
        self.console.print(start_line(config, plan, self.device), highlight=False)
        self.epoch_task = self.progress.add_task("epochs ", total=self.epochs, info="")
        self.batch_task = self.progress.add_task("batches", total=self.steps, info="")

    def step_done(self, epoch: int, step: int, loss_sum: Any, samples: int) -> None:
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_SECONDS and step < self.steps:
            return
        self._last_refresh = now
        running = loss_sum.item() / samples  # host sync, throttled to a few per second
        self.progress.update(self.batch_task, completed=step, info=f"loss {running:.4f}")

    def epoch_done(self, metrics: EpochMetrics) -> None:
        self.console.print(epoch_line(metrics, self.epochs), highlight=False)
        self.progress.update(self.epoch_task, completed=metrics.epoch, info=f"test_acc {metrics.test_acc:.4f}")
        self.progress.reset(self.batch_task, total=self.steps, info="")

    def __enter__(self) -> "TerminalProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def progress_for(console: Console, stream: IO[str], device: str) -> PlainProgress | TerminalProgress:
    return TerminalProgress(console, device) if console.is_terminal else PlainProgress(stream, device)
