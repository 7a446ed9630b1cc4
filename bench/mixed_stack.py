"""One stack of K x M models against K stacks of M, timed step by step in one process: relu and
sigmoid models in one stack (how `dllab compare relu sigmoid` now stacks them) against a stack of each
(as before, and as --stacks variant plans it), and for scale the same with one activation throughout.
--activations names the K variants (default relu sigmoid: K = 2).

The three layouts take turns every step (one step of the big stack, then one of each small stack),
each step timed, so the machine's changing load falls on all of them alike. Synthetic batches drawn
from the loaded dataset, the relu preset's 784-256-256-10 MLP with Xavier init and Adam; seconds
summed over the steps.

Usage: DLLAB_DATA_DIR=../shared/data python bench/mixed_stack.py [--models 5] [--steps 600] [--device cpu]
       [--activations relu sigmoid]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import torch

from dl_lab.components.model import build_mlp
from dl_lab.components.optimizers import OPTIMIZERS
from dl_lab.components.plain_optim import plain_step
from dl_lab.config.loader import load_config
from dl_lab.config.schema import ExperimentConfig
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import hardware
from dl_lab.training.fused import stacked_pass
from dl_lab.training.stack import Stack, fused_ops


def stack_step(configs: Sequence[ExperimentConfig], x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of a stack of ``configs`` (the batched engine's CPU pass and optimizer)."""
    count, device = len(configs), x.device
    torch.manual_seed(count)
    models = [build_mlp(c.model, x.shape[1], 10).to(device) for c in configs]
    the_stack = Stack(models, [0.0] * count, device)
    ops = fused_ops(the_stack, [])
    assert ops is not None
    forward_backward = stacked_pass(ops)
    optimizer = OPTIMIZERS[configs[0].optimizer.name].build(the_stack.parameters(), configs[0].optimizer, device)
    step = plain_step(optimizer)
    generator = torch.Generator(device).manual_seed(count)
    batch = configs[0].data.batch_size

    def run() -> None:
        index = torch.randint(0, len(y), (count * batch,), generator=generator, device=device)
        forward_backward(x.index_select(0, index).view(count, batch, -1), y.index_select(0, index).view(count, batch))
        step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=5, help="M: models per small stack")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--activations", nargs="+", default=["relu", "sigmoid"], help="one stack of M per name")
    args = parser.parse_args()
    variants = [
        load_config("relu", [f"model.activation={name}", "model.init=xavier_uniform", f"device={args.device}"]).config
        for name in args.activations
    ]
    relu = variants[0].model_copy(update={"model": variants[0].model.model_copy(update={"activation": "relu"})})
    device, data = device_and_data(relu, os.environ)
    if device.type != "cpu":
        raise SystemExit("the stack's hand-written pass runs on the CPU only")
    x, y, m, k = data.train.x, data.train.y, args.models, len(variants)
    cases = {
        " + ".join(args.activations): ([c for c in variants for _ in range(m)], [[c] * m for c in variants]),
        "relu only": ([relu] * k * m, [[relu] * m] * k),
    }
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{args.steps} steps of batch {relu.data.batch_size} per model, 784-256-256-10, Adam; seconds summed")
    for name, (big, smalls) in cases.items():
        one, parts = stack_step(big, x, y), [stack_step(small, x, y) for small in smalls]
        for _ in range(10):  # warm-up
            one()
            for part in parts:
                part()
        together = apart = 0.0
        for _ in range(args.steps):
            start = time.perf_counter()
            one()
            middle = time.perf_counter()
            for part in parts:
                part()
            together, apart = together + middle - start, apart + time.perf_counter() - middle
        print(
            f"{name}: one stack of {k * m} {together:.2f} s, {k} stacks of {m} {apart:.2f} s, "
            f"ratio {together / apart:.3f}"
        )


if __name__ == "__main__":
    main()
