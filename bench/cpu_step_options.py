"""Options for the CPU training step, side by side in one process: fp32 (dllab's path) against bf16
autocast, torch.compile of the step (--compile: ~30 s of compilation first) and 1 vs 2 intra-op threads,
for one 784-256-256-10 model and for a stack of M models trained with batched matmuls (the batched
engine's layout, (M, in, out) weights). Prints seconds per model-epoch (600 steps of 100) and ratios
to fp32. Synthetic tensors: the arithmetic and memory traffic of MNIST without reading it.

Usage: python bench/cpu_step_options.py [--steps 200] [--models 5] [--repeats 2] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dl_lab.training.device import cpu_kind

SIZES = [(784, 256), (256, 256), (256, 10)]


def stacked_params(models: int) -> list[torch.Tensor]:
    params = []
    for fan_in, fan_out in SIZES:
        params += [(torch.randn(models, fan_in, fan_out) * fan_in**-0.5).requires_grad_(),
                   torch.zeros(models, 1, fan_out, requires_grad=True)]  # fmt: skip
    return params


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for layer in range(len(SIZES)):
        h = torch.baddbmm(params[2 * layer + 1], h, params[2 * layer])
        if layer < len(SIZES) - 1:
            h = torch.relu(h)
    return h


def seconds_per_model_epoch(models: int, mode: str, steps: int, x: torch.Tensor, y: torch.Tensor) -> float:
    params = stacked_params(models)
    optimizer = torch.optim.Adam(params, 1e-3, foreach=True)
    orders = [torch.randperm(len(x)) for _ in range(models)]

    def step(index: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            out = forward(params, x[index])
        loss = F.cross_entropy(out.float().reshape(-1, 10), y[index].reshape(-1), reduction="sum") / index.shape[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    run = torch.compile(step) if mode == "compile" else step
    batches = len(x) // 100

    def index(i: int) -> torch.Tensor:
        return torch.stack([order[(i % batches) * 100 : (i % batches + 1) * 100] for order in orders])

    for i in range(10):  # warm-up (and compilation)
        run(index(i))
    start = time.perf_counter()
    for i in range(steps):
        run(index(i))
    return (time.perf_counter() - start) / steps * 600 / models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(60000, 784, generator=generator), torch.randint(0, 10, (60000,), generator=generator)
    modes = ["fp32", "bf16", *(["compile"] if args.compile else []), "fp32, 1 thread"]
    print(f"machine: {cpu_kind()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    threads = torch.get_num_threads()
    for models in (1, args.models):
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                torch.set_num_threads(1 if "1 thread" in mode else threads)
                times[mode].append(seconds_per_model_epoch(models, mode.split(",")[0], args.steps, x, y))
        torch.set_num_threads(threads)
        fp32 = statistics.median(times["fp32"])
        label = "one model" if models == 1 else f"stack of {models}"
        for mode in modes:
            median = statistics.median(times[mode])
            print(f"{label:>11}, {mode:<15} {median:6.3f} s per model-epoch  ({median / fp32:.2f} x fp32)")


if __name__ == "__main__":
    main()
