"""Time of one Adam step over the lab MLP's parameters (784-256-256-10, or a stack of M of them), per
implementation, side by side in one process.

On a GPU a captured training step of this model spends about a third of its time in fused Adam's
one kernel (tools: bench/step_profile.py): torch's multi-tensor kernels give each block a 65,536-
element chunk, so 270,000 parameters keep 5 of an H200's 132 multiprocessors busy. This compares:

- fused:          Adam(fused=True), what dllab builds
- foreach:        Adam(foreach=True), a few multi-tensor kernels
- single:         Adam(foreach=False), a handful of plain elementwise kernels per parameter
- flat single:    the same parameters as one flat tensor (what views into one buffer would give)
- flat fused:     one flat tensor, fused kernel
- sliced fused:   one flat buffer each for parameters, gradients and moments, handed to the fused kernel
                  as --slice-element views (one block each: more multiprocessors busy), one shared step
                  count; the same update bit for bit (checked here against fused)
- compiled foreach: torch.compile of foreach Adam's step (inductor fuses it); with --no-compile left out

Capturable on CUDA (CPU Adam cannot be). On CUDA each variant's steps are captured in a CUDA graph (25 per graph) and replayed,
timed by CUDA events; on the CPU they run eagerly. Prints microseconds per step and the ratio to fused.

Usage: python bench/optimizer_step.py [--device cuda] [--models 1] [--steps 500] [--slice 8192] [--no-compile]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from dl_lab.training.device import hardware

SHAPES = [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)]
PER_GRAPH = 25


def parameters(models: int, flat: bool, device: torch.device) -> list[torch.Tensor]:
    lead = (models,) if models > 1 else ()
    shapes = [lead + shape for shape in SHAPES]
    if flat:
        shapes = [(sum(torch.Size(shape).numel() for shape in shapes),)]
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator).to(device).requires_grad_() for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(device) * 1e-2
    return params


def sliced_fused(models: int, device: torch.device, size: int) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """Adam's fused kernel over ``size``-element views of flat buffers; returns the step and the flat
    parameter buffer (to compare with flat fused's)."""
    [flat] = parameters(models, True, device)
    param, grad = flat.detach(), flat.grad
    moments = torch.zeros_like(param), torch.zeros_like(param)
    count = torch.zeros((), device=device)  # one step count for every slice
    cut = lambda buffer: list(buffer.split(size))
    params, grads, exp_avgs, exp_avg_sqs = cut(param), cut(grad), cut(moments[0]), cut(moments[1])
    steps = [count] * len(params)

    def step() -> None:
        count.add_(1)
        torch._fused_adam_(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=1e-3, beta1=0.9, beta2=0.999,
            weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
        )  # fmt: skip

    return step, [param]


def timed(step, device: torch.device, steps: int) -> float:
    """Microseconds per step."""
    for _ in range(3):
        step()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps * 1e6
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(PER_GRAPH):
            step()
    replays = max(steps // PER_GRAPH, 1)
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) * 1e3 / (replays * PER_GRAPH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--slice", type=int, default=8192, help="elements per view of the sliced variant")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [
        ("fused", False, {"fused": True}),
        ("foreach", False, {"foreach": True}),
        ("single", False, {"foreach": False}),
        ("flat single", True, {"foreach": False}),
        ("flat fused", True, {"fused": True}),
        ("sliced fused", True, {}),
    ]
    if not args.no_compile:
        variants.append(("compiled foreach", False, {"foreach": True, "compile": True}))
    name = hardware(device)  # the GPU's name, or the CPU's kind and flags
    count = sum(torch.Size(s).numel() for s in SHAPES) * args.models
    print(f"{name}, torch {torch.__version__}: Adam over {args.models} model(s), {count:,} parameters")
    results: dict[str, float] = {}
    finals: dict[str, torch.Tensor] = {}
    for label, flat, options in variants:
        options = dict(options)
        compile_it = options.pop("compile", False)
        try:
            if label == "sliced fused":
                step, params = sliced_fused(args.models, device, args.slice)
            else:
                params = parameters(args.models, flat, device)
                optimizer = torch.optim.Adam(params, lr=1e-3, capturable=device.type == "cuda", **options)
                step = torch.compile(optimizer.step) if compile_it else optimizer.step
            results[label] = timed(step, device, args.steps)
            finals[label] = torch.cat([p.detach().reshape(-1) for p in params]).cpu()
        except Exception as error:  # a variant this torch or device cannot run is reported, not fatal
            print(f"  {label:<18} failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            continue
        ratio = results[label] / results["fused"] if "fused" in results else float("nan")
        same = ""
        if label == "sliced fused" and "flat fused" in finals:  # both took the same number of steps
            same = (
                "   same parameters as flat fused"
                if torch.equal(finals[label], finals["flat fused"])
                else "   DIFFERENT parameters"
            )
        print(f"  {label:<18} {results[label]:9.1f} us per step   {ratio:5.2f} x fused{same}")


if __name__ == "__main__":
    main()
