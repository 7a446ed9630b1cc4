"""The 2 x 5 comparison grid (relu and sigmoid presets, 5 seeds each: a stack per variant, as
--executor ray plans it) trained by the local
executor and by Ray on this machine, side by side in one process. Prints wall times, Ray's start-up
and per-task overhead, and the ratios.

Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_executors.py [--epochs 1] [--dataset mnist]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dl_lab.experiments import ray_executor
from dl_lab.experiments.execute import load_data_for, run_compare
from dl_lab.experiments.planning import plan_comparison, units_to_train
from dl_lab.runs.comparison import create_compare_dir
from dl_lab.training.device import cpu_kind
from dl_lab.training.events import Observer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    overrides = [
        f"train.epochs={args.epochs}",
        "device=cpu",
        "model.init=xavier_uniform",
        f"data.dataset={args.dataset}",
    ]
    plan = plan_comparison(["relu", "sigmoid"], overrides, [], args.seeds, stacks="variant")  # Ray's default
    todo = units_to_train(plan, frozenset())
    data = load_data_for([run.config for run in plan.runs], os.environ)
    print(f"machine: {cpu_kind()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"grid: 2 variants x {args.seeds} seeds = {len(todo)} stacks, {args.dataset}, {args.epochs} epoch(s)")
    with tempfile.TemporaryDirectory() as root:
        folder, lock = create_compare_dir(Path(root), plan, {})
        start = time.perf_counter()
        run_compare(folder, plan, todo, data, Observer())
        local = time.perf_counter() - start
        lock.release()

        start = time.perf_counter()
        ray = ray_executor.connect(ray_executor.RayOptions(), os.environ)
        startup = time.perf_counter() - start
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get([noop.remote() for _ in range(4)])  # warm the worker processes
        laps = []
        for _ in range(20):
            lap = time.perf_counter()
            ray.get(noop.remote())
            laps.append(time.perf_counter() - lap)
        timings = {}
        for cpus in (2.0, 1.0):
            folder, lock = create_compare_dir(Path(root), plan, {})
            start = time.perf_counter()
            ray_executor._dispatch(
                ray, folder, plan, todo, ray_executor.RayOptions(cpus_per_task=cpus), lambda line: None
            )
            timings[cpus] = time.perf_counter() - start
            lock.release()
        ray.shutdown()
    print(f"local executor:                         {local:6.2f} s")
    for cpus, seconds in timings.items():
        print(f"ray, {cpus:g} CPU(s) per task:                {seconds:6.2f} s  (ray / local {seconds / local:.2f})")
    print(f"ray start-up (local instance):          {startup:6.2f} s")
    print(f"ray per-task round trip (no-op task):   {1000 * statistics.median(laps):6.1f} ms")


if __name__ == "__main__":
    main()
