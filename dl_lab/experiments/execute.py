"""From configs to finished run folders: the steps `dllab train` and `dllab compare` take."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dl_lab.components.datasets import Dataset, load_dataset, resolve_data_root
from dl_lab.config.loader import LoadedConfig, load_config
from dl_lab.config.schema import ExperimentConfig
from dl_lab.errors import ConfigError, DataError, UserError
from dl_lab.experiments.scheduling import Unit, data_key
from dl_lab.runs.comparison import ComparePlan
from dl_lab.runs.recorder import RunRecorder
from dl_lab.runs.records import RunSummary
from dl_lab.runs.store import create_run_dir
from dl_lab.signals import deferred
from dl_lab.training.device import (
    PROCESS_SWITCHES,
    available_bytes,
    configure_process,
    resolve_device,
    switch,
)
from dl_lab.training.engine import SequentialEngine, train
from dl_lab.training.environment import environment
from dl_lab.training.events import Observer, Observers, Run, run_key
from dl_lab.training.memory import human, planned_parameters, training_bytes
from dl_lab.training.results import BatchPlan, EpochMetrics, PretrainEpoch, TrainResult
from dl_lab.training.stack import train_batched


@dataclass(frozen=True)
class Prepared:
    """Everything validated and loaded; nothing written yet."""

    loaded: LoadedConfig
    device: torch.device
    data: Dataset


def prepare(source: str, overrides: Iterable[str], environ: Mapping[str, str]) -> Prepared:
    """Validate the config, the device, the data and that the run fits. Raises UserError subclasses on bad input."""
    loaded = load_config(source, overrides)
    try:
        device, data = device_and_data(loaded.config, environ)
        check_trainable(loaded.config, data, device)
    except UserError as exc:
        if exc.key is None:
            raise
        raise type(exc)(f"{loaded.where(exc.key)}: {exc}") from None
    return Prepared(loaded, device, data)


def device_and_data(
    config: ExperimentConfig, environ: Mapping[str, str], device_spec: str | None = None
) -> tuple[torch.device, Dataset]:
    """The config's device (or ``device_spec``), and its dataset loaded onto it."""
    device = resolve_device(device_spec or config.device)
    configure_process(device, environ)
    return device, load_dataset(config.data, resolve_data_root(config.data.root, environ), device)


def check_trainable(
    config: ExperimentConfig, data: Dataset, device: torch.device, models: int = 1, memory: bool = True
) -> None:
    """Refuse, before anything is written, a run that cannot train: an epoch without a single batch,
    events asked for without their writer installed, or a model (a stack of ``models``) that cannot
    fit in the memory ``device`` has free."""
    n, batch = len(data.train), config.data.batch_size
    if BatchPlan.make(n, batch, config.data.drop_last, config.model.has_batchnorm_layers).steps == 0:
        why = (
            "with data.drop_last: true the only batch is partial and dropped"
            if config.data.drop_last
            else "batch norm cannot train on a single sample"
        )
        raise DataError(
            f"an epoch would have no training step: {n} training sample(s) in batches of {batch}, and {why}; "
            f"allowed: data.batch_size <= {n}" + (" or data.drop_last: false" if config.data.drop_last else ""),
            key="data.batch_size",
        )
    if config.train.tensorboard:
        from dl_lab.runs import tensorboard

        tensorboard.require("true", key="train.tensorboard")
    needed = training_bytes(config, data.num_features, data.num_classes, len(data.test), models)
    free = available_bytes(device) if memory else None
    if free is not None and needed > free:
        stack = f" for a stack of {models} models" if models > 1 else ""
        raise ConfigError(
            f"training needs about {human(needed)}{stack} ({planned_parameters(config, data.num_features, data.num_classes):,} "
            f"parameters per model with gradients and {config.optimizer.name} state, plus a batch's activations), "
            f"but {device} has about {human(free)} free; allowed: smaller model.hidden widths"
            + (", fewer runs per stack (--stacks variant, or --engine sequential)" if models > 1 else ""),
            key="model.hidden",
        )


def load_data_for(
    configs: Iterable[ExperimentConfig], environ: Mapping[str, str], device_spec: str | None = None
) -> dict[str, tuple[torch.device, Dataset]]:
    """Resolve the device and load the dataset once per distinct (device, data) setting. With
    ``device_spec`` (the Ray driver: the runs train elsewhere) the data is checked on that device."""
    loaded: dict[str, tuple[torch.device, Dataset]] = {}
    for name in PROCESS_SWITCHES:
        switch(environ, name)  # a setting of the process, not of a variant: refused as such
    for config in configs:
        key = data_key(config)
        if key not in loaded:
            try:
                loaded[key] = device_and_data(config, environ, device_spec)
            except UserError as exc:
                raise _for_variant(config, exc) from None
    return loaded


def check_units(plan: ComparePlan, data: Mapping[str, tuple[torch.device, Dataset]], memory: bool = True) -> None:
    """check_trainable for every unit of work (a stack needs memory for all its models at once;
    ``memory`` False: the units train on other machines, whose memory this one cannot tell)."""
    for unit in plan.units:
        config = plan.runs[unit.runs[0]].config
        device, dataset = data[data_key(config)]
        try:
            check_trainable(config, dataset, device, len(unit.runs) if unit.stacked and memory else 1, memory)
        except UserError as exc:
            raise _for_variant(config, exc) from None


def _for_variant(config: ExperimentConfig, exc: UserError) -> UserError:
    return type(exc)(f"variant {config.name}: {exc.key + ': ' if exc.key else ''}{exc}")


class OnlyRuns(Observer):
    """Passes on the events of the runs in ``keep`` only: a unit retrained whole for its unfinished
    runs must not record (or show) the finished ones riding along."""

    def __init__(self, observer: Observer, keep: set[tuple[str, int]]) -> None:
        self.observer, self.keep = observer, keep

    def _kept(self, run: Run) -> bool:
        return run_key(run) in self.keep

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        if self._kept(run):
            self.observer.run_started(run, plan)

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        if self._kept(run):
            self.observer.pretrain_epoch_done(run, record)

    def step_done(self, runs: Sequence[Run], epoch: int, step: int, losses: Any, samples: int) -> None:
        self.observer.step_done(runs, epoch, step, losses, samples)

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        if self._kept(run):
            self.observer.epoch_done(run, metrics)

    def run_finished(self, run: Run, model: Any, data: Dataset) -> None:
        if self._kept(run):
            self.observer.run_finished(run, model, data)

    def run_done(self, run: Run, result: TrainResult) -> None:
        if self._kept(run):
            self.observer.run_done(run, result)


class CompareRecorder(Observer):
    """Gives every recorded run of a comparison its planned folder inside the comparison folder,
    created when the run starts, and passes each run's events to that run's recorder."""

    def __init__(self, folder: Path, env: dict, folders: Mapping[tuple[str, int], str]) -> None:
        self.folder, self.env, self.folders = folder, env, folders
        self.open: dict[tuple[str, int], RunRecorder] = {}  # started, not yet done
        self.summaries: list[RunSummary] = []

    def run_started(self, run: Run, plan: BatchPlan) -> None:
        key = run_key(run)
        with deferred():  # the folder appears with its first files (see RunRecorder)
            path = self.folder / self.folders[key]
            path.mkdir()  # unfinished leftovers were moved aside: a folder in the way is an error, not a target
            self.open[key] = RunRecorder(path, run, self.env)
        self.open[key].run_started(run, plan)

    def pretrain_epoch_done(self, run: Run, record: PretrainEpoch) -> None:
        if run_key(run) in self.open:
            self.open[run_key(run)].pretrain_epoch_done(run, record)

    def epoch_done(self, run: Run, metrics: EpochMetrics) -> None:
        if run_key(run) in self.open:
            self.open[run_key(run)].epoch_done(run, metrics)

    def run_done(self, run: Run, result: TrainResult) -> None:
        key = run_key(run)
        recorder = self.open.pop(key, None)
        if recorder is None:  # its folder could not be created: nothing on disk to mark
            self.summaries.append(
                RunSummary(
                    name=run.name,
                    seed=run.seed,
                    status=result.status,
                    run_dir=str(self.folder / self.folders[key]),
                    error=result.error,
                )
            )
            return
        self.summaries.append(recorder.finish(result))

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM outside a run's training loop (setting up or recording): mark open runs interrupted."""
        self.summaries += [recorder.interrupted() for recorder in self.open.values()]
        self.open.clear()


def run_compare(
    folder: Path,
    plan: ComparePlan,
    todo: Sequence[tuple[Unit, frozenset[int]]],
    data: Mapping[str, tuple[torch.device, Dataset]],
    progress: Observer,
) -> tuple[list[RunSummary], bool]:
    """Train the units in ``todo`` (planning.units_to_train) here, one after another, recording their
    unfinished runs in their planned folders. Returns the summaries of the runs recorded now and
    whether training was interrupted. (ray_executor.run_compare_on_ray dispatches the same units to Ray.)"""
    folders = {run.key: run.folder for run in plan.runs}
    recorders: dict[str, CompareRecorder] = {}
    summaries: list[RunSummary] = []
    try:
        for unit, record in todo:
            configs = [plan.runs[i].config for i in unit.runs]
            key = data_key(configs[0])
            device, dataset = data[key]
            if key not in recorders:
                recorders[key] = CompareRecorder(folder, environment(device, dataset.root), folders)
            done, interrupted = train_unit_into(
                recorders[key], configs, unit.stacked, {plan.runs[i].key for i in record}, dataset, device, progress
            )
            summaries += done
            if interrupted:
                return summaries, True
    except KeyboardInterrupt:  # between units (or while probing the environment): nothing is left open
        for recorder in recorders.values():
            recorder.interrupted()
            summaries += _take(recorder)
        return summaries, True
    return summaries, False


def train_unit_into(
    recorder: CompareRecorder,
    configs: Sequence[ExperimentConfig],
    stacked: bool,
    record: set[tuple[str, int]],
    dataset: Dataset,
    device: torch.device,
    progress: Observer,
) -> tuple[list[RunSummary], bool]:
    """Train one unit of work (a stack, or one run), recording the runs in ``record`` through
    ``recorder``; returns their summaries and whether training was interrupted."""
    observer = OnlyRuns(Observers([recorder, progress]), record)
    try:
        if stacked:
            results = train_batched(configs, dataset, device, observer)
        else:
            results = [train(configs[0], dataset, device, observer)]
        interrupted = any(result.status == "interrupted" for result in results)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # runs still open (set up, or cut short as they started) are marked interrupted
        recorder.interrupted()
    return _take(recorder), interrupted


def _take(recorder: CompareRecorder) -> list[RunSummary]:
    taken, recorder.summaries = recorder.summaries, []
    return taken


def run_one(prepared: Prepared, runs_root: Path, progress: Observer) -> RunSummary:
    """Train one config into a new run folder, locked while it is written; returns the final summary.

    Whatever ends the run — completion, an exception anywhere (disk full, a failed allocation),
    Ctrl-C, SIGTERM or SIGHUP — the summary on disk says so."""
    config = prepared.loaded.config
    env = environment(prepared.device, prepared.data.root)  # runs git: kept out of the deferred section
    recorder = None
    try:
        with deferred():
            recorder = RunRecorder(create_run_dir(runs_root, config.name), config, env, lock=True)
        [result] = SequentialEngine().run([config], prepared.data, prepared.device, Observers([recorder, progress]))
        return recorder.finish(result)
    except KeyboardInterrupt:  # arrived outside the engine's loop (setting up, or while writing)
        if recorder is None:
            raise
        return recorder.interrupted()
    except Exception:
        if recorder is None:
            raise
        return recorder.failed(traceback.format_exc())
