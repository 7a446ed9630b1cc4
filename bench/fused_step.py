"""The hand-written training pass (training/fused.py) against autograd, side by side in one process:
seconds per model-epoch for one model (sequential engine) and for a stack (batched engine), and
whether the runs' numbers agree (they should be identical: same kernels, same order).

Usage: DLLAB_DATA_DIR=../shared/data python bench/fused_step.py [--preset relu] [--seeds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training import engine, stack
from dl_lab.training.device import hardware
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine


@contextmanager
def autograd_only() -> Iterator[None]:
    """Both engines as they were before fused.py: every step through loss.backward()."""
    single, ops = engine.single_pass, stack.fused_ops
    engine.single_pass, stack.fused_ops = (lambda *a: None), (lambda *a: None)
    try:
        yield
    finally:
        engine.single_pass, stack.fused_ops = single, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="relu")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides, e.g. model.dropout=0.2")
    args = parser.parse_args()
    configs = [
        load_config(args.preset, [f"train.epochs={args.epochs}", "device=cpu", f"seed={777 + i}", *args.set]).config
        for i in range(args.seeds)
    ]
    device, data = device_and_data(configs[0], os.environ)
    engines = {"sequential": SequentialEngine(), "batched": BatchedEngine()}
    seconds: dict[tuple[str, str], list[float]] = {}
    numbers: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for _ in range(args.repeats):
        for name, unit in engines.items():
            for mode in ("autograd", "hand-written"):
                with autograd_only() if mode == "autograd" else nullcontext():
                    start = time.perf_counter()
                    results = unit.run(configs, data, device, Observer())
                    seconds.setdefault((name, mode), []).append(time.perf_counter() - start)
                numbers[(name, mode)] = [(m.train_loss, m.test_loss, m.test_acc) for r in results for m in r.history]
    model_epochs = args.seeds * args.epochs
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"preset {args.preset} {' '.join(args.set)}, {args.seeds} seeds x {args.epochs} epoch(s), "
        f"median of {args.repeats}, seconds per model-epoch"
    )
    for name in engines:
        auto = statistics.median(seconds[(name, "autograd")]) / model_epochs
        hand = statistics.median(seconds[(name, "hand-written")]) / model_epochs
        same = numbers[(name, "autograd")] == numbers[(name, "hand-written")]
        print(
            f"{name:<10} autograd {auto:.3f}  hand-written {hand:.3f}  ratio {hand / auto:.2f}  "
            f"numbers {'identical' if same else 'DIFFER'}"
        )
    accuracies = [r.final.test_acc for r in results]  # the last run: batched, hand-written
    print(f"test_acc per seed: {' '.join(f'{a:.4f}' for a in accuracies)}")


if __name__ == "__main__":
    main()
