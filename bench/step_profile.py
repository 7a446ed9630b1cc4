"""Where a training step's time goes: one epoch of a preset (one model or a stack) under torch.profiler.

Prints the kernels (CUDA) or operators (CPU) that take the most time, how many of them one step
launches and their summed time per step: on a GPU, the step's floor when launches cost nothing (what
CUDA graphs approach) and what fusing would have to cut. The epoch's steps run eagerly by default;
--cuda-graphs profiles captured replays (the profiler sees the graph's kernels where CUPTI reports them).

Usage: DLLAB_DATA_DIR=../shared/data python bench/step_profile.py [--preset relu] [--models 1] [--device cpu]
       [--cuda-graphs] [--compile] [--set KEY=VALUE ...] [--top 15]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import hardware
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="relu")
    parser.add_argument("--models", type=int, default=1, help="1: one run; more: a stack of that many seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    overrides = [
        "train.epochs=1",
        f"device={args.device}",
        f"train.cuda_graphs={str(args.cuda_graphs).lower()}",
        f"train.compile={str(args.compile).lower()}",
        *args.set,
    ]
    configs = [load_config(args.preset, [*overrides, f"seed={777 + i}"]).config for i in range(args.models)]
    device, data = device_and_data(configs[0], os.environ)
    engine = BatchedEngine() if args.models > 1 else SequentialEngine()
    engine.run(configs, data, device, Observer())  # warm: compiling, cuDNN/cuBLAS handles, allocator
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        results = engine.run(configs, data, device, Observer())
        if cuda:
            torch.cuda.synchronize()
    steps = results[0].plan.steps
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type.name == "CUDA"]
        total_us = sum(e.self_device_time_total for e in kernels)
        count = sum(e.count for e in kernels)
        key = "self_device_time_total"
    else:
        kernels = [e for e in events if e.key.startswith("aten::")]
        total_us = sum(e.self_cpu_time_total for e in kernels)
        count = sum(e.count for e in kernels)
        key = "self_cpu_time_total"
    print(f"machine: {hardware(device)}, torch {torch.__version__}")
    print(
        f"{args.preset}, {args.models} model(s), 1 epoch of {steps} steps + evaluation"
        f"{', CUDA graphs' if args.cuda_graphs else ''}{', compiled' if args.compile else ''}; "
        f"seconds {sum(r.seconds for r in results):.3f} (under the profiler)"
    )
    print(
        f"{'kernels' if cuda else 'aten ops'}: {count} in all, {count / steps:.1f} per step; "
        f"their time {total_us / 1e6:.3f} s, {total_us / steps:.1f} us per step"
    )
    print(events.table(sort_by=key, row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
