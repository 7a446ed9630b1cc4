"""Per-epoch cost of train.diagnostics on the lab's relu preset, measured side by side in one process.

Alternates runs with diagnostics on and off (same seed, same data), and prints the median seconds per
epoch of each and the ratio. Usage: DLLAB_DATA_DIR=../shared/data python bench/diagnostics_overhead.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dl_lab.config_loader import load_config
from dl_lab.data import load_dataset, resolve_data_root
from dl_lab.device import device_name, resolve_device
from dl_lab.diagnostics import PROBE_SIZE, probe
from dl_lab.engine import Observer, train
from dl_lab.model import build_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base = load_config("relu", [f"train.epochs={args.epochs}", f"device={args.device}"]).config
    device = resolve_device(base.device)
    data = load_dataset(base.data, resolve_data_root(base.data.root, os.environ), device)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for diagnostics in (False, True):
            config = base.model_copy(update={"train": base.train.model_copy(update={"diagnostics": diagnostics})})
            result = train(config, data, device, Observer())
            seconds[diagnostics] += [m.seconds for m in result.history[1:]]  # skip the warm-up epoch
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    # The probe alone, timed in isolation: a steadier number than the difference of two noisy medians.
    model = build_mlp(base.model, data.num_features, data.num_classes).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    probe(model, loss_fn, x, y, base.model.activation)
    start = time.perf_counter()
    for _ in range(20):
        probe(model, loss_fn, x, y, base.model.activation)
    probe_seconds = (time.perf_counter() - start) / 20
    print(f"machine: {device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"relu preset (784-256-256-10, Adam, batch 100), {args.repeats} x {args.epochs} epochs each, first epoch of each run skipped")
    print(f"diagnostics off: {off:.3f} s/epoch (median)")
    print(f"diagnostics on:  {on:.3f} s/epoch (median)")
    print(f"overhead: {100 * (on / off - 1):+.1f}% (difference of medians; noisy on a shared machine)")
    print(f"probe alone: {1000 * probe_seconds:.1f} ms per epoch = {100 * probe_seconds / off:.2f}% of an epoch")


if __name__ == "__main__":
    main()
