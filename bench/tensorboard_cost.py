"""Cost of train.tensorboard (live TensorBoard events) on the lab's relu preset, side by side in one process.

Alternates whole recorded runs (engine plus run folder writes) with train.tensorboard off and on,
same seed and data, and prints the median wall seconds of each and their ratio; then times one
epoch's event writes (a metrics row of every column, flushed) in isolation, as a share of an epoch.
Nothing is written per step: the events are written by the run's recorder at the epoch boundary.
Usage: DLLAB_DATA_DIR=../shared/data python bench/tensorboard_cost.py [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import benchargs
import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.runs.recorder import RunRecorder
from dl_lab.runs.tensorboard import EventLog
from dl_lab.training.device import hardware
from dl_lab.training.engine import SequentialEngine


def main() -> None:
    args = benchargs.parse(__doc__)
    base = load_config("relu", [f"train.epochs={args.epochs}", f"device={args.device}"]).config
    device, data = device_and_data(base, os.environ)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    epoch_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for live in (False, True):
                config = base.model_copy(update={"train": base.train.model_copy(update={"tensorboard": live})})
                folder = Path(root) / f"{repeat}-{live}"
                folder.mkdir()
                start = time.perf_counter()
                recorder = RunRecorder(folder, config, {"device": str(device), "device_name": "bench"})
                [result] = SequentialEngine().run([config], data, device, recorder)
                recorder.finish(result)
                seconds[live].append(time.perf_counter() - start)
                epoch_seconds += [m.seconds for m in result.history]
        row = result.history[-1].as_dict()
        events = EventLog(Path(root) / "alone")
        events.epoch(row, flush=True)
        start = time.perf_counter()
        for epoch in range(2, 202):
            events.epoch({**row, "epoch": epoch}, flush=True)
        write_seconds = (time.perf_counter() - start) / 200
        events.close({}, {})
    off, on = (statistics.median(seconds[live]) for live in (False, True))
    epoch = statistics.median(epoch_seconds)
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"relu preset, {args.repeats} x {args.epochs}-epoch runs each, recorded into run folders")
    print(
        f"train.tensorboard off: {off:.2f} s per run (median); on: {on:.2f} s; on/off = {on / off:.3f} (noise: a few %)"
    )
    print(
        f"one epoch's events alone ({len(row) - 1} scalars, flushed): {1000 * write_seconds:.2f} ms = "
        f"{100 * write_seconds / epoch:.3f}% of a {epoch:.2f} s epoch; per training step: nothing"
    )


if __name__ == "__main__":
    main()
