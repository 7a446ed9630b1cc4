"""Flushing denormal floats to zero (FTZ/DAZ) on the CPU, side by side, per preset:

1. paired timing: one process, one thread, training one model (the preset's MLP, fused Adam) with the
   flag switched on and off every 10 steps, so both settings share the machine's moods alike (this
   shared 2-core machine's speed swings by 1.5x from one process to the next); the time of each
   setting's steps and their ratio, per epoch;
2. (--engines) whole runs through dllab's engines in fresh child processes, the two settings
   alternating (the flag belongs to a thread and threads inherit it, so it is set before torch starts
   its thread pool): whether every epoch's numbers are bit for bit the same, and their wall time.

Usage: DLLAB_DATA_DIR=../shared/data python bench/denormals.py [--presets relu sigmoid] [--epochs 3]
       [--engines batched sequential] [--seeds 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(preset: str, flush: bool, seeds: int, epochs: int, engine_name: str) -> None:
    """Train and print {"seconds", "cpu", "numbers"} as JSON (the flag set before any torch work)."""
    import torch

    torch.set_flush_denormal(flush)
    from dl_lab.config.loader import load_config
    from dl_lab.experiments.execute import device_and_data
    from dl_lab.training.engine import Observer, SequentialEngine
    from dl_lab.training.stack import BatchedEngine

    configs = [
        load_config(preset, [f"train.epochs={epochs}", "device=cpu", f"seed={777 + i}"]).config for i in range(seeds)
    ]
    device, data = device_and_data(configs[0], os.environ)
    unit = BatchedEngine() if engine_name == "batched" else SequentialEngine()
    start, cpu = time.perf_counter(), time.process_time()
    results = unit.run(configs, data, device, Observer())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    numbers = [[m.train_loss, m.test_loss, m.test_acc] for r in results for m in r.history]
    print(json.dumps({"seconds": seconds, "cpu": cpu, "numbers": numbers}))


def paired(preset: str, epochs: int, block: int = 10) -> None:
    import torch
    from torch import nn

    from dl_lab.components.model import build_mlp
    from dl_lab.config.loader import load_config
    from dl_lab.experiments.execute import device_and_data

    torch.set_num_threads(1)  # the flag set here holds for every kernel: no worker threads
    config = load_config(preset, ["device=cpu"]).config
    device, data = device_and_data(config, {**os.environ, "DLLAB_FLUSH_DENORMALS": "off"})
    torch.manual_seed(config.seed)
    model = build_mlp(config.model, data.num_features, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.lr, fused=True)
    order_stream, batch = torch.Generator().manual_seed(config.seed), config.data.batch_size
    spent = {False: 0.0, True: 0.0}
    for epoch in range(epochs):
        order = torch.randperm(len(data.train), generator=order_stream)
        for step in range(len(data.train) // batch):
            if step % block == 0:
                flush = (step // block + epoch) % 2 == 1  # who goes first alternates
                torch.set_flush_denormal(flush)
                start = time.perf_counter()
            index = order[step * batch : (step + 1) * batch]
            loss = nn.functional.cross_entropy(model(data.train.x[index]), data.train.y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % block == block - 1:
                spent[flush] += time.perf_counter() - start
        print(
            f"{preset:<16} paired, 1 thread, after epoch {epoch + 1}: kept {spent[False]:.2f} s, "
            f"flushed {spent[True]:.2f} s, ratio {spent[True] / spent[False]:.2f}",
            flush=True,
        )
    torch.set_flush_denormal(False)
    torch.set_num_threads(os.cpu_count() or 1)


def measure(preset: str, flush: bool, args: argparse.Namespace, engine_name: str) -> dict:
    command = [sys.executable, __file__, "--child", preset, engine_name, "1" if flush else "0"]
    command += ["--seeds", str(args.seeds), "--epochs", str(args.epochs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["relu", "sigmoid", "lab09/he", "lab09/batchnorm"])
    parser.add_argument("--engines", nargs="*", default=[], help="also whole runs through these engines")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "ENGINE", "FLUSH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, engine_name, flush = args.child
        child(preset, flush == "1", args.seeds, args.epochs, engine_name)
        return
    import torch

    from dl_lab.training.device import hardware

    print(f"machine: {hardware(torch.device('cpu'))}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.engines:
        print(f"engines: {args.seeds} seeds x {args.epochs} epoch(s), median of {args.repeats}, s per model-epoch")
    model_epochs = args.seeds * args.epochs
    for preset in args.presets:
        paired(preset, args.epochs)
        for engine_name in args.engines:
            seconds: dict[bool, list[float]] = {False: [], True: []}
            cpu: dict[bool, list[float]] = {False: [], True: []}
            numbers: dict[bool, list] = {}
            for repeat in range(args.repeats):
                for flush in (repeat % 2 == 1, repeat % 2 == 0):  # who goes first alternates
                    found = measure(preset, flush, args, engine_name)
                    seconds[flush].append(found["seconds"] / model_epochs)
                    cpu[flush].append(found["cpu"] / model_epochs)
                    numbers[flush] = found["numbers"]
            plain, flushed = statistics.median(seconds[False]), statistics.median(seconds[True])
            cpu_plain, cpu_flushed = statistics.median(cpu[False]), statistics.median(cpu[True])
            same = "identical" if numbers[False] == numbers[True] else "DIFFER"
            print(
                f"{preset:<16} {engine_name:<10} wall: kept {plain:.3f} flushed {flushed:.3f} "
                f"ratio {flushed / plain:.2f}; CPU time: kept {cpu_plain:.3f} flushed {cpu_flushed:.3f} "
                f"ratio {cpu_flushed / cpu_plain:.2f}; numbers {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
