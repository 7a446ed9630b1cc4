"""TensorBoard event files for runs: one TensorBoard run per dllab run, written with tensorboardX (an
optional extra: ``pip install "dl_lab[tensorboard]"``).

What a run's events hold (the same whether written live or exported):
- every column of metrics.csv as a scalar at step = epoch, grouped for TensorBoard's sections
  (``loss/test``, ``accuracy/train``, ``grad_norm/linear_1``, ``act_mean/hidden_2``, see ``tag``);
- RBM pre-training's reconstruction error per hidden layer (``pretrain/…``, step = pre-training epoch);
- the resolved config, flattened to dotted keys, as hparams, with the status, and the final metrics
  (``final/test_acc``…) as the hparams' metrics, at the last epoch.

Live (``train.tensorboard: true``) the run's recorder writes the events into the run folder at each
epoch boundary, never per step; ``dllab export tensorboard`` writes them after the fact from
metrics.csv, summary.json and config.yaml. Importing this module loads neither tensorboardX nor
torch; an EventLog imports tensorboardX (which loads torch when installed) when it is created.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dl_lab.config.diff import flat
from dl_lab.errors import ConfigError
from dl_lab.runs.records import RunSummary

INSTALL = 'pip install "dl_lab[tensorboard]"  (or: pip install tensorboardX)'

_SCALARS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_eval_loss": "loss/train_eval",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "train_eval_acc": "accuracy/train_eval",
    "seconds": "time/epoch_seconds",
}
_HIDDEN_COLUMN = re.compile(r"^(?P<metric>.+)_h(?P<layer>\d+)$")  # act_mean_h1: hidden layer 1
_LINEAR_COLUMN = re.compile(r"^(?P<metric>.+)_(?P<layer>\d+)$")  # grad_norm_1: Linear layer 1


def available() -> bool:
    """Whether tensorboardX can be imported (checked without importing it, or torch)."""
    try:
        return importlib.util.find_spec("tensorboardX") is not None
    except (ImportError, ValueError):  # a broken install, or an import blocked in sys.modules
        return False


def require(what: str, key: str | None = None) -> None:
    """Refuse (ConfigError, exit 2) when tensorboardX is missing; ``what`` names what needs it, ``key``
    the config key that asked for it."""
    if not available():
        raise ConfigError(
            f"{what} needs the tensorboardX package, which is not installed; install it with: {INSTALL}", key=key
        )


def tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column: 'test_acc' -> 'accuracy/test',
    'grad_norm_2' -> 'grad_norm/linear_2', 'dead_h1' -> 'dead/hidden_1'."""
    if column in _SCALARS:
        return _SCALARS[column]
    if match := _HIDDEN_COLUMN.match(column):
        return f"{match['metric']}/hidden_{match['layer']}"
    if match := _LINEAR_COLUMN.match(column):
        return f"{match['metric']}/linear_{match['layer']}"
    return f"other/{column}"


def hparam_value(value: Any) -> bool | int | float | str:
    """What TensorBoard's hparams accept: numbers, booleans and strings (lists and null as JSON text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def run_hparams(config: Mapping[str, Any], status: str) -> dict[str, Any]:
    """A run's hparams: its resolved config (nested, or already flattened) as dotted keys, and its status."""
    return {**flat(dict(config)), "status": status}


def final_metrics(summary: RunSummary) -> dict[str, float | None]:
    """The hparams' metrics: a run's final metrics and its best test accuracy."""
    final = summary.final.model_dump() if summary.final else {}
    return {**final, "best_test_acc": summary.best_test_acc}


class EventLog:
    """The event file of one dllab run, in ``logdir`` (created when missing)."""

    def __init__(self, logdir: Path) -> None:
        require("writing TensorBoard events")
        from tensorboardX import SummaryWriter

        # flush_secs: the writer's thread flushes on its own only this rarely; epoch() flushes when asked
        self._writer = SummaryWriter(logdir=str(logdir), flush_secs=3600, max_queue=1000)
        self._last_epoch = 0
        self.epochs = 0  # rows written

    def epoch(self, row: Mapping[str, Any], flush: bool = False) -> None:
        """One metrics.csv row (its 'epoch' is the step; empty values are skipped)."""
        step = int(row["epoch"])
        for column, value in row.items():
            if column != "epoch" and value is not None and value != "":
                self._writer.add_scalar(tag(column), float(value), step)
        self._last_epoch = max(self._last_epoch, step)
        self.epochs += 1
        if flush:
            self._writer.flush()

    def pretrain_epoch(self, layer: int, epoch: int, reconstruction_error: float, flush: bool = False) -> None:
        self._writer.add_scalar(f"pretrain/reconstruction_error_hidden_{layer}", float(reconstruction_error), epoch)
        if flush:
            self._writer.flush()

    def close(self, hparams: Mapping[str, Any], final: Mapping[str, float | None]) -> None:
        """Write the hparams (config keys and values) with the final metrics, then close the file."""
        from tensorboardX.summary import hparams as hparams_summaries

        metrics = {f"final/{key}": float(value) for key, value in final.items() if value is not None}
        values = {key: hparam_value(value) for key, value in hparams.items()}
        for summary in hparams_summaries(values, metrics):
            self._writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, self._last_epoch)
        self._writer.close()

    def stop(self) -> None:
        """Close the file without hparams (writing has failed)."""
        self._writer.close()
