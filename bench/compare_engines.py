"""A 2 x 5 comparison grid (relu and sigmoid presets, 5 seeds each) trained by the sequential and the
batched engine, side by side in one process: batched as `dllab compare` stacks it (one stack of all ten
models, both activations) and with a stack per variant (--stacks variant, as before activations
shared a stack). Prints total seconds and the ratios, and each seed's test accuracy under each. With
--bf16 the batched engine also trains the grid with train.bf16_matmul=true, judged against the fp32
sequential result; with --compile, with train.compile=true (its first repeat includes compiling the
step: use --repeats 3 or more, whose median leaves it out); with --mkl-stacks, also the batched engine
with $DLLAB_ONEDNN_STACKS=off (MKL's float32 kernels for the stack: what the default is on a CPU where
oneDNN's are not chosen, and what every CPU did before they were).

Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_engines.py [--epochs 1] [--device cpu] [--repeats 2] [--bf16]
       [--compile] [--mkl-stacks] [--init preset] [--presets relu sigmoid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import ENV_ONEDNN_STACKS, choose_stack_matmuls, hardware
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine


class MklStacks(BatchedEngine):
    """The batched engine with the stack's float32 matmuls left to MKL ($DLLAB_ONEDNN_STACKS=off)."""

    def run(self, configs, data, device, observer):  # type: ignore[no-untyped-def]
        choose_stack_matmuls(device, {ENV_ONEDNN_STACKS: "off"})
        try:
            return super().run(configs, data, device, observer)
        finally:
            choose_stack_matmuls(device, os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["relu", "sigmoid"], help="the grid's variants")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="train.cuda_graphs=true for both engines")
    parser.add_argument("--bf16", action="store_true", help="also the batched engine with train.bf16_matmul=true")
    parser.add_argument("--compile", action="store_true", help="also the batched engine with train.compile=true")
    parser.add_argument("--mkl-stacks", action="store_true", help="also the batched engine with MKL's matmuls")
    parser.add_argument(
        "--no-sequential",
        action="store_true",
        help="leave the sequential engine out (times only; no ratios or accuracy comparison): for a GPU's short lease",
    )
    parser.add_argument(
        "--init",
        default="xavier_uniform",
        help="model.init of every run (default xavier_uniform, as in earlier figures); 'preset' keeps the "
        "presets' own N(0, 1), as `dllab compare relu sigmoid` trains them",
    )
    args = parser.parse_args()
    extra = ["train.cuda_graphs=true"] if args.cuda_graphs else []

    def grid(*more: str) -> list:
        return [
            load_config(
                name,
                [
                    f"train.epochs={args.epochs}",
                    f"device={args.device}",
                    f"seed={777 + i}",
                    *([] if args.init == "preset" else [f"model.init={args.init}"]),
                    *extra,
                    *more,
                ],
            ).config
            for name in args.presets
            for i in range(args.seeds)
        ]

    configs = grid()
    device, data = device_and_data(configs[0], os.environ)
    engines = [
        ("sequential", SequentialEngine(), configs),
        ("batched", BatchedEngine(), configs),  # one stack of relu and sigmoid models
        ("batched per variant", BatchedEngine(by="variant"), configs),  # a stack per variant
    ]
    if args.bf16:
        engines.append(("batched bf16", BatchedEngine(), grid("train.bf16_matmul=true")))
    if args.mkl_stacks:
        engines.append(("batched MKL", MklStacks(), configs))
    if args.compile:
        engines.append(("batched compiled", BatchedEngine(), grid("train.compile=true")))
    if args.no_sequential:
        engines = engines[1:]
    times: dict[str, list[float]] = {name: [] for name, _, _ in engines}
    accuracies: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, engine, runs in list(engines):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            results = engine.run(runs, data, device, Observer())
            times[name].append(time.perf_counter() - start)
            failed = [r.error for r in results if r.status != "completed"]
            if failed:  # reported, and left out of the other repeats and the table: the others still count
                print(f"{name}: {len(failed)} run(s) did not complete: {failed[0]}")
                if name == "sequential":
                    raise SystemExit("the sequential engine is the baseline of every ratio")
                engines.remove((name, engine, runs))
                continue
            accuracies[name] = [r.history[-1].test_acc for r in results]
    samples = len(configs) * args.epochs * results[0].plan.samples
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"grid: {' + '.join(args.presets)} x {args.seeds} seeds, init {args.init}, "
        f"{args.epochs} epoch(s) each; "
        f"median of {args.repeats}{'; CUDA graphs' if args.cuda_graphs else ''}"
    )
    for name, _, _ in engines:
        seconds = statistics.median(times[name])
        each = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name + ' engine:':<28} {seconds:.2f} s  ({samples / seconds:,.0f} samples/s; each: {each})")
    if args.no_sequential:
        for name, _, _ in engines:
            print(f"{name} test_acc per model: {' '.join(f'{a:.4f}' for a in accuracies[name])}")
        return
    sequential = statistics.median(times["sequential"])
    for name, _, _ in engines[1:]:
        print(f"{name} / sequential: {statistics.median(times[name]) / sequential:.2f}")
    for v, variant in enumerate(args.presets):
        seeds = slice(v * args.seeds, (v + 1) * args.seeds)
        seq = accuracies["sequential"][seeds]
        spread = statistics.stdev(seq) if len(seq) > 1 else 0.0
        for name, _, _ in engines:
            print(
                f"{variant} test_acc per seed, {name + ':':<21} {' '.join(f'{a:.4f}' for a in accuracies[name][seeds])}"
            )
        print(f"  sequential seeds: std {spread:.4f}, range {min(seq):.4f}-{max(seq):.4f}")
        for name, _, _ in engines[1:]:
            other = accuracies[name][seeds]
            inside = all(min(seq) <= a <= max(seq) for a in other)
            gap = abs(statistics.mean(other) - statistics.mean(seq))
            print(
                f"  {name}: largest difference {max(abs(a - b) for a, b in zip(seq, other)):.5f}, mean differs by "
                f"{gap:.4f} ({gap / spread if spread else 0:.1f} std); {'every' if inside else 'NOT every'} value "
                "inside the sequential range"
            )


if __name__ == "__main__":
    main()
