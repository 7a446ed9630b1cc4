"""From configs to finished run folders: the steps `dllab train` and `dllab compare` take."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from dl_lab.config import ExperimentConfig
from dl_lab.config_loader import LoadedConfig, load_config
from dl_lab.data import Dataset, load_dataset, resolve_data_root
from dl_lab.device import resolve_device
from dl_lab.batched import BatchedEngine, plan_batches
from dl_lab.engine import BatchPlan, Engine, EpochMetrics, Observer, Observers, SequentialEngine, TrainResult
from dl_lab.environment import environment
from dl_lab.errors import UserError
from dl_lab.pretraining import PretrainEpoch
from dl_lab.runs import RunRecorder, create_run_dir


@dataclass(frozen=True)
class Prepared:
    """Everything validated and loaded; nothing written yet."""

    loaded: LoadedConfig
    device: torch.device
    data: Dataset


def prepare(source: str, overrides: Iterable[str], environ: Mapping[str, str]) -> Prepared:
    """Validate the config, the device and the data. Raises UserError subclasses on bad input."""
    loaded = load_config(source, overrides)
    try:
        device, data = device_and_data(loaded.config, environ)
    except UserError as exc:
        if exc.key is None:
            raise
        raise type(exc)(f"{loaded.where(exc.key)}: {exc}") from None
    return Prepared(loaded, device, data)


def device_and_data(config: ExperimentConfig, environ: Mapping[str, str]) -> tuple[torch.device, Dataset]:
    """The config's device, and its dataset loaded onto it."""
    device = resolve_device(config.device)
    return device, load_dataset(config.data, resolve_data_root(config.data.root, environ), device)


def load_data_for(configs: Iterable[ExperimentConfig], environ: Mapping[str, str]) -> dict[str, tuple[torch.device, Dataset]]:
    """Resolve the device and load the dataset once per distinct (device, data) setting."""
    loaded: dict[str, tuple[torch.device, Dataset]] = {}
    for config in configs:
        key = data_key(config)
        if key not in loaded:
            try:
                loaded[key] = device_and_data(config, environ)
            except UserError as exc:
                raise type(exc)(f"variant {config.name}: {exc.key + ': ' if exc.key else ''}{exc}") from None
    return loaded


def data_key(config: ExperimentConfig) -> str:
    """Runs with equal keys share one loaded dataset."""
    return json.dumps([config.device, config.data.model_dump(mode="json")], sort_keys=True)


class CompareRecorder(Observer):
    """Gives every run of a comparison its own run folder inside the comparison folder."""

    def __init__(self, folder: Path, env: dict) -> None:
        self.folder, self.env = folder, env
        self.open: dict[tuple[str, int], RunRecorder] = {}  # started, not yet done
        self.current: RunRecorder | None = None
        self.summaries: list[dict] = []

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        run_folder = create_run_dir(self.folder, f"{config.name}-seed{config.seed}", timestamp=False)
        self.current = self.open[(config.name, config.seed)] = RunRecorder(run_folder, config, self.env)
        self.current.run_started(config, plan)

    def switch_run(self, config: ExperimentConfig) -> None:
        self.current = self.open[(config.name, config.seed)]

    def pretrain_epoch_done(self, record: PretrainEpoch) -> None:
        self.current.pretrain_epoch_done(record)

    def epoch_done(self, metrics: EpochMetrics) -> None:
        self.current.epoch_done(metrics)

    def run_done(self, config: ExperimentConfig, result: TrainResult) -> None:
        self.summaries.append(self.open.pop((config.name, config.seed)).finish(result))
        self.current = None

    def interrupted(self) -> None:
        """Ctrl-C outside a run's training loop (setting up or recording): mark open runs interrupted."""
        self.summaries += [recorder.interrupted() for recorder in self.open.values()]
        self.open.clear()
        self.current = None


ENGINES = ("auto", "batched", "sequential")


def make_engine(name: str) -> Engine:
    """auto: batch runs that share an architecture, train lone ones as usual; batched: batch even
    lone runs (a stack of one); sequential: one model at a time."""
    if name == "sequential":
        return SequentialEngine()
    return BatchedEngine(min_batch=2 if name == "auto" else 1)


def describe_engine(name: str, configs: list[ExperimentConfig]) -> str:
    """'batched: 2 groups of 5 runs' — said in compare's output and recorded in summary.json."""
    if name == "sequential":
        return f"sequential: {len(configs)} runs one by one"
    groups = plan_batches(configs, 2 if name == "auto" else 1)
    sizes = sorted((len(g) for g in groups if len(g) > 1 or name == "batched"), reverse=True)
    if not sizes:
        return f"sequential: {len(configs)} runs share no architecture to batch"
    alone = sum(1 for g in groups if len(g) == 1) if name == "auto" else 0
    text = f"batched: {len(sizes)} stacked group(s) ({' + '.join(map(str, sizes))} runs)"
    return text + (f", {alone} run(s) one by one" if alone else "")


def run_compare(folder: Path, todo: Sequence[ExperimentConfig], data: dict[str, tuple[torch.device, Dataset]],
                progress: Observer, engine: str = "auto") -> tuple[list[dict], bool]:
    """Train ``todo`` (compare.runs_to_train) into run folders inside the comparison ``folder``.

    Returns the summaries of the runs trained now and whether the user interrupted.
    """
    summaries: list[dict] = []
    for key in dict.fromkeys(data_key(config) for config in todo):
        device, dataset = data[key]
        recorder = CompareRecorder(folder, environment(device, dataset.root))
        group = [config for config in todo if data_key(config) == key]
        try:
            results = make_engine(engine).run(group, dataset, device, Observers([recorder, progress]))
        except KeyboardInterrupt:
            recorder.interrupted()
            return summaries + recorder.summaries, True
        summaries += recorder.summaries
        if any(result.status == "interrupted" for result in results):
            return summaries, True
    return summaries, False


def run_one(prepared: Prepared, runs_root: Path, progress: Observer) -> dict:
    """Train one config into a new run folder; returns the summary that was written."""
    config = prepared.loaded.config
    recorder = RunRecorder(create_run_dir(runs_root, config.name), config,
                           environment(prepared.device, prepared.data.root))
    try:
        [result] = SequentialEngine().run([config], prepared.data, prepared.device, Observers([recorder, progress]))
    except KeyboardInterrupt:  # arrived between engine steps (e.g. while building the model)
        return recorder.interrupted()
    return recorder.finish(result)
