"""What the engine reports while it trains, to progress displays and run recorders.

Every event names the run it belongs to (its config: name and seed identify it), so an observer of
a stack of models, whose runs' events interleave, needs no notion of a 'current' run. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dl_lab.config.schema import ExperimentConfig
from dl_lab.training.results import BatchPlan, EpochMetrics, PretrainEpoch, TrainResult

if TYPE_CHECKING:
    from torch import nn

    from dl_lab.components.datasets import Dataset

Run = ExperimentConfig  # a run is named by its config (name and seed tell runs of a comparison apart)


def run_key(run: Run) -> tuple[str, int]:
    return run.name, run.seed


class Observer:
    """Methods do nothing by default; subclasses override what they need."""

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        pass

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        pass

    def step_done(self, runs: Sequence[Run], epoch: int, step: int, losses: Any, samples: int) -> None:
        """A training step of the runs trained together (one, or a stack): ``losses`` (steps so far,
        len(runs)) are this epoch's per-step losses, on the device; reading them syncs, so throttle.
        ``samples``: training samples each run has seen this epoch."""

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        pass

    def run_finished(self, run: Run, model: nn.Module, data: Dataset) -> None:
        """The trained model, after the last epoch of a completed run (checks, extra evaluations)."""

    def run_done(self, run: Run, result: TrainResult) -> None:
        """A run ended (completed, failed, diverged or interrupted); called once per started run."""


@dataclass
class Observers(Observer):
    """Fan-out to several observers, in order."""

    members: Sequence[Observer] = field(default_factory=tuple)

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        for member in self.members:
            member.run_started(run, plan)

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        for member in self.members:
            member.pretrain_epoch_done(run, record)

    def step_done(self, runs: Sequence[Run], epoch: int, step: int, losses: Any, samples: int) -> None:
        for member in self.members:
            member.step_done(runs, epoch, step, losses, samples)

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        for member in self.members:
            member.epoch_done(run, metrics)

    def run_finished(self, run: Run, model: nn.Module, data: Dataset) -> None:
        for member in self.members:
            member.run_finished(run, model, data)

    def run_done(self, run: Run, result: TrainResult) -> None:
        for member in self.members:
            member.run_done(run, result)
