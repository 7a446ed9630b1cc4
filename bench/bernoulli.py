"""Bernoulli draws on the CPU, side by side in one process: torch's kernels against
components/sampling.py (``torch.rand`` compared with the probability: the same draws), for dropout
masks (``bernoulli_`` vs ``bernoulli_draws``) and RBM samples (``torch.bernoulli`` vs
``bernoulli_sample``): one call at a time, inside whole training runs of dropout presets (one model
and a stack), and inside the RBM pre-training of ``lab09/rbm``.

In a run the two take turns call by call (they draw the same values and leave the generator alike,
so the run is the same either way) and each call is timed: this shared machine's speed swings too
much between runs for whole-run times to show a difference of a few percent. Also prints whether
runs with either alone record identical numbers.

Usage: DLLAB_DATA_DIR=../shared/data python bench/bernoulli.py [--presets lab09/dropout] [--seeds 2] [--no-rbm]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from dl_lab.components import sampling
from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training import fused, stack
from dl_lab.training.device import hardware
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine

NEW = sampling.bernoulli_draws


def bernoulli_kernel(shape, keep, generator, device) -> torch.Tensor:
    return torch.empty(shape, device=device).bernoulli_(keep, generator=generator)


def rbm_pretraining(turns: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """lab09/rbm's pre-training of one model with ``turns`` drawing its samples: seconds, weights."""
    from dl_lab.components import pretraining
    from dl_lab.components.model import build_mlp

    config = load_config("lab09/rbm", ["device=cpu"]).config
    _, data = device_and_data(config, os.environ)
    torch.manual_seed(config.seed)
    model = build_mlp(config.model, data.num_features, data.num_classes)
    pretraining.bernoulli_sample = turns
    try:
        start = time.perf_counter()
        pretraining.pretrain_rbm(
            model, data.train.x, config.model.rbm, torch.Generator().manual_seed(1), lambda *a: None
        )
        seconds = time.perf_counter() - start
    finally:
        pretraining.bernoulli_sample = sampling.bernoulli_sample
    return seconds, [p.detach().clone() for p in model.parameters()]


def rbm() -> None:
    old_sample = torch.bernoulli
    turns = InTurn([old_sample, sampling.bernoulli_sample])
    total, weights = rbm_pretraining(turns)
    same = all(
        torch.equal(a, b) and torch.equal(a, c)
        for a, b, c in zip(weights, rbm_pretraining(old_sample)[1], rbm_pretraining(sampling.bernoulli_sample)[1])
    )
    old, new = 2 * turns.spent[old_sample], 2 * turns.spent[sampling.bernoulli_sample]
    print(
        f"lab09/rbm pre-training (2 layers x 5 epochs, one model): {total:.2f} s; its samples all by "
        f"torch.bernoulli {old:.2f} s, all by bernoulli_sample {new:.2f} s (ratio {new / old:.2f}, "
        f"{(old - new) / total:.0%} of the pre-training); weights {'identical' if same else 'DIFFER'}",
        flush=True,
    )


class InTurn:
    """Draws with the two implementations in turn, call by call, timing each call."""

    def __init__(self, draws: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.draws, self.calls = draws, 0
        self.spent = dict.fromkeys(draws, 0.0)

    def __call__(self, *args) -> torch.Tensor:
        draw = self.draws[self.calls % len(self.draws)]
        self.calls += 1
        start = time.perf_counter()
        drawn = draw(*args)
        self.spent[draw] += time.perf_counter() - start
        return drawn


@contextmanager
def masks_by(draw: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Training draws its masks with ``draw``: one model's (fused.py) and a stack's (stack.py)."""
    fused.bernoulli_draws = stack.bernoulli_draws = draw
    try:
        yield
    finally:
        fused.bernoulli_draws = stack.bernoulli_draws = NEW


def one_mask(shape: tuple[int, ...], draw) -> float:
    return one_call(draw, shape, 0.7, torch.Generator().manual_seed(0), torch.device("cpu"))


def one_call(draw, *args, repeats: int = 200) -> float:
    """Microseconds per call of ``draw(*args)``."""
    draw(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        draw(*args)
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lab09/dropout"])
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--no-rbm", action="store_true", help="skip the RBM pre-training (about a minute)")
    args = parser.parse_args()
    print(f"machine: {hardware(torch.device('cpu'))}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for shape in [(100, 256), (100, 512)]:
        for _ in range(2):  # twice, alternating
            old, new = one_mask(shape, bernoulli_kernel), one_mask(shape, NEW)
            print(f"one mask {shape}: bernoulli_ {old:.0f} us, bernoulli_draws {new:.0f} us, ratio {new / old:.2f}")
    probabilities = torch.rand(100, 256)
    for _ in range(2):
        old, new = one_call(torch.bernoulli, probabilities), one_call(sampling.bernoulli_sample, probabilities)
        print(
            f"one sample (100, 256): torch.bernoulli {old:.0f} us, bernoulli_sample {new:.0f} us, ratio {new / old:.2f}"
        )
    for preset in args.presets:
        configs = [
            load_config(preset, ["train.epochs=1", "device=cpu", f"seed={777 + i}", *args.set]).config
            for i in range(args.seeds)
        ]
        device, data = device_and_data(configs[0], os.environ)
        for name, unit in {"sequential": SequentialEngine(), "batched": BatchedEngine()}.items():
            turns = InTurn([bernoulli_kernel, NEW])
            numbers, seconds = [], []
            for draw in (turns, bernoulli_kernel, NEW):
                with masks_by(draw):
                    start = time.perf_counter()
                    results = unit.run(configs, data, device, Observer())
                    seconds.append(time.perf_counter() - start)
                numbers.append([(m.train_loss, m.test_loss, m.test_acc) for r in results for m in r.history])
            old, new = 2 * turns.spent[bernoulli_kernel], 2 * turns.spent[NEW]  # each drew half the masks
            per, total = len(configs), seconds[0]  # the run taking turns
            print(
                f"{preset} {' '.join(args.set)} {name}, per model-epoch: run {total / per:.3f} s; its masks all by "
                f"bernoulli_ {old / per:.3f} s, all by bernoulli_draws {new / per:.3f} s (ratio {new / old:.2f}, "
                f"{(old - new) / total:.0%} of the run); numbers {'identical' if numbers[0] == numbers[1] == numbers[2] else 'DIFFER'}",
                flush=True,
            )

    if not args.no_rbm:
        rbm()


if __name__ == "__main__":
    main()
