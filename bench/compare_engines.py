"""A 2 x 5 comparison grid (relu and sigmoid presets, 5 seeds each) trained by the sequential and the
batched engine, side by side in one process. Prints total seconds and the ratio.

Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_engines.py [--epochs 1] [--device cpu] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import device_name
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="train.cuda_graphs=true for both engines")
    args = parser.parse_args()
    extra = ["train.cuda_graphs=true"] if args.cuda_graphs else []
    configs = [
        load_config(
            name,
            [
                f"train.epochs={args.epochs}",
                f"device={args.device}",
                f"seed={777 + i}",
                "model.init=xavier_uniform",
                *extra,
            ],
        ).config
        for name in ("relu", "sigmoid")
        for i in range(args.seeds)
    ]
    device, data = device_and_data(configs[0], os.environ)
    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    accuracies: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, engine in [("sequential", SequentialEngine()), ("batched", BatchedEngine())]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            results = engine.run(configs, data, device, Observer())
            times[name].append(time.perf_counter() - start)
            failed = [r.error for r in results if r.status != "completed"]
            if failed:
                raise SystemExit(f"{name}: {len(failed)} run(s) did not complete: {failed[0]}")
            accuracies[name] = [r.history[-1].test_acc for r in results]
    sequential, batched = statistics.median(times["sequential"]), statistics.median(times["batched"])
    samples = len(configs) * args.epochs * results[0].plan.samples
    print(f"machine: {device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"grid: 2 variants x {args.seeds} seeds, 784-256-256-10, Adam, batch 100, {args.epochs} epoch(s) each; "
        f"median of {args.repeats}{'; CUDA graphs' if args.cuda_graphs else ''}"
    )
    print(f"sequential engine: {sequential:.2f} s  ({samples / sequential:,.0f} samples/s)")
    print(f"batched engine:    {batched:.2f} s  ({samples / batched:,.0f} samples/s)")
    print(f"batched / sequential: {batched / sequential:.2f}")
    for v, variant in enumerate(("relu", "sigmoid")):
        seeds = slice(v * args.seeds, (v + 1) * args.seeds)
        seq, bat = accuracies["sequential"][seeds], accuracies["batched"][seeds]
        spread = statistics.stdev(seq) if len(seq) > 1 else 0.0
        print(f"{variant} test_acc per seed, sequential: {' '.join(f'{a:.4f}' for a in seq)}")
        print(f"{variant} test_acc per seed, batched:    {' '.join(f'{a:.4f}' for a in bat)}")
        inside = all(min(seq) <= a <= max(seq) for a in bat)
        print(
            f"  largest difference {max(abs(a - b) for a, b in zip(seq, bat)):.5f}; sequential seeds: std {spread:.4f}, "
            f"range {min(seq):.4f}-{max(seq):.4f} ({'every' if inside else 'NOT every'} batched value inside)"
        )


if __name__ == "__main__":
    main()
