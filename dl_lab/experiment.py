"""From a config name to a finished run folder: the steps `dllab train` (and later `compare`) share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from dl_lab.config_loader import LoadedConfig, load_config
from dl_lab.data import Dataset, load_dataset, resolve_data_root
from dl_lab.device import resolve_device
from dl_lab.engine import Observer, Observers, SequentialEngine
from dl_lab.environment import environment
from dl_lab.errors import UserError
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
    config = loaded.config
    try:
        device = resolve_device(config.device)
        data = load_dataset(config.data, resolve_data_root(config.data.root, environ), device)
    except UserError as exc:
        if exc.key is None:
            raise
        raise type(exc)(f"{loaded.where(exc.key)}: {exc}") from None
    return Prepared(loaded, device, data)


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
