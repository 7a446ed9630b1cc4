"""What torch's float32 matmul precision `medium` (`train.bf16_matmul`) does on this CPU, and what it
costs or saves inside training, side by side in one process:

1. precision: each matmul form a training step calls (forward, weight gradient, input gradient; one
   model's `addmm`/`mm` and a stack's `bmm`, at the relu preset's shapes) under `highest` and `medium`,
   each against a float64 product of the same float32 operands; the largest relative error, and whether
   `medium` rounded the products to bf16 here (dl_lab.training.device.bf16_products is the probe dl_lab
   itself runs) or only chose another float32 kernel (oneDNN's instead of MKL's);
2. speed: training steps of one model (the sequential engine's step) and of a stack (the batched
   engine's), with the precision switched between `highest` and `medium` every --block steps, so both
   share the machine's changing load alike; seconds summed per setting and their ratio.

With --preset NAME the speed part trains that preset's model instead (its own architecture, init,
batch size and optimizer; the stack: --models copies with their own initial weights).

Usage: DLLAB_DATA_DIR=../shared/data python bench/matmul_kernels.py [--steps 1200] [--models 10] [--block 10]
       [--preset lab09/deep [--set data.batch_size=32]]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from mixed_stack import stack_step

from dl_lab.components.model import build_mlp
from dl_lab.components.optimizers import OPTIMIZERS
from dl_lab.components.plain_optim import plain_step, plain_zero_grad
from dl_lab.config.loader import load_config
from dl_lab.config.schema import ExperimentConfig
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import bf16_products, hardware
from dl_lab.training.fused import single_pass

PRECISIONS = ("highest", "medium")


def forms(models: int) -> dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """Each matmul form of a 784-256 layer's step: name -> () -> (float32 operands' product, float64 one)."""
    g = torch.Generator().manual_seed(0)
    x, w, dy = torch.rand(100, 784, generator=g), torch.randn(256, 784, generator=g), torch.randn(100, 256, generator=g)
    xs, ws = torch.rand(models, 100, 784, generator=g), torch.randn(models, 784, 256, generator=g)
    dys = torch.randn(models, 100, 256, generator=g)
    bias = torch.randn(256, generator=g)
    pairs: dict[str, Callable[[torch.Tensor, ...], torch.Tensor]] = {  # type: ignore[misc]
        "one model, forward (addmm)": lambda t: torch.addmm(t(bias), t(x), t(w).t()),
        "one model, weight gradient (mm)": lambda t: torch.mm(t(dy).t(), t(x)),
        "one model, input gradient (mm)": lambda t: torch.mm(t(dy), t(w)),
        f"stack of {models}, forward (bmm)": lambda t: torch.bmm(t(xs), t(ws)),
        f"stack of {models}, weight gradient (bmm)": lambda t: torch.bmm(t(xs).transpose(1, 2), t(dys)),
        f"stack of {models}, input gradient (bmm)": lambda t: torch.bmm(t(dys), t(ws).transpose(1, 2)),
    }
    return {
        name: (lambda f=f: (f(lambda a: a), f(lambda a: a.double()))) for name, f in pairs.items()
    }  # fmt: skip


def relative_error(product: torch.Tensor, exact: torch.Tensor) -> float:
    return ((product.double() - exact).abs().max() / exact.abs().max()).item()


def one_model_step(config: ExperimentConfig, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of one model, as the sequential engine takes it on the CPU."""
    torch.manual_seed(config.seed)
    model = build_mlp(config.model, x.shape[1], 10)
    forward_backward = single_pass(model, x.device)
    assert forward_backward is not None
    optimizer = OPTIMIZERS[config.optimizer.name].build(model.parameters(), config.optimizer, x.device)
    step, zero_grad = plain_step(optimizer), plain_zero_grad(optimizer)
    generator, batch = torch.Generator().manual_seed(config.seed), config.data.batch_size

    def run() -> None:
        index = torch.randint(0, len(y), (batch,), generator=generator)
        zero_grad()
        forward_backward(x.index_select(0, index), y.index_select(0, index))
        step()

    return run


def paired(run: Callable[[], None], steps: int, block: int) -> dict[str, float]:
    """Seconds spent under each precision, switching every ``block`` steps (who goes first alternates)."""
    for precision in PRECISIONS:  # warm-up: each kernel's first call
        torch.set_float32_matmul_precision(precision)
        for _ in range(5):
            run()
    spent = dict.fromkeys(PRECISIONS, 0.0)
    for first in range(0, steps, block):
        precision = PRECISIONS[(first // block) % 2]
        torch.set_float32_matmul_precision(precision)
        start = time.perf_counter()
        for _ in range(block):
            run()
        spent[precision] += time.perf_counter() - start
    torch.set_float32_matmul_precision("highest")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps per case, both settings together")
    parser.add_argument("--models", type=int, default=10, help="models in the stack")
    parser.add_argument("--block", type=int, default=10, help="steps between switches")
    parser.add_argument("--preset", help="train this preset's model (default: relu and sigmoid, Xavier init)")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override for --preset, e.g. model.hidden=[64]"
    )
    args = parser.parse_args()
    device = torch.device("cpu")
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"dl_lab's probe: `medium` rounds products to bf16 here: {bf16_products()}")
    print("precision: largest error relative to the largest |value|, against float64 products")
    for name, compute in forms(args.models).items():
        errors = {}
        for precision in PRECISIONS:
            torch.set_float32_matmul_precision(precision)
            errors[precision] = relative_error(*compute())
        torch.set_float32_matmul_precision("highest")
        kind = "bf16 products" if errors["medium"] > 1e-4 else "float32 products"
        print(f"  {name:<38} highest {errors['highest']:.1e}, medium {errors['medium']:.1e} ({kind})")

    if args.preset:
        first = load_config(args.preset, ["device=cpu", *args.set]).config
        stacked, names = [first] * args.models, (args.preset, args.preset)
    else:
        first = load_config("relu", ["model.init=xavier_uniform", "device=cpu"]).config
        sigmoid = first.model_copy(update={"model": first.model.model_copy(update={"activation": "sigmoid"})})
        half = args.models // 2
        stacked, names = [first] * half + [sigmoid] * (args.models - half), ("relu", "relu + sigmoid")
    _, data = device_and_data(first, os.environ)
    x, y = data.train.x, data.train.y
    cases = {
        f"one model ({names[0]})": one_model_step(first, x, y),
        f"stack of {args.models} ({names[1]})": stack_step(stacked, x, y),
    }
    sizes = "-".join(str(n) for n in [x.shape[1], *first.model.hidden, 10])
    print(
        f"speed: {args.steps} steps per case, {sizes}, {first.optimizer.name}, batch {first.data.batch_size}; "
        f"switching every {args.block} steps"
    )
    for name, run in cases.items():
        spent = paired(run, args.steps, args.block)
        print(
            f"  {name:<30} highest {spent['highest']:.2f} s, medium {spent['medium']:.2f} s, "
            f"medium / highest {spent['medium'] / spent['highest']:.3f}"
        )


if __name__ == "__main__":
    main()
