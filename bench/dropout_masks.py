"""Dropout masks on the CPU, side by side in one process: torch's ``bernoulli_`` against
``fused.bernoulli`` (float64 ``torch.rand`` compared with keep: the same draws), one mask at a time
and inside whole training runs of dropout presets (one model and a stack).

In a run the two take turns call by call (they draw the same values and leave the generator alike,
so the run is the same either way) and each call is timed: this shared machine's speed swings too
much between runs for whole-run times to show a difference of a few percent. Also prints whether
runs with either alone record identical numbers.

Usage: DLLAB_DATA_DIR=../shared/data python bench/dropout_masks.py [--presets lab09/dropout] [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training import fused, stack
from dl_lab.training.device import hardware
from dl_lab.training.engine import Observer, SequentialEngine
from dl_lab.training.stack import BatchedEngine

NEW = fused.bernoulli


def bernoulli_kernel(shape, keep, generator, device) -> torch.Tensor:
    return torch.empty(shape, device=device).bernoulli_(keep, generator=generator)


class InTurn:
    """Draws each mask with the two implementations in turn, timing each call."""

    def __init__(self, draws: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.draws, self.calls = draws, 0
        self.spent = dict.fromkeys(draws, 0.0)

    def __call__(self, shape, keep, generator, device) -> torch.Tensor:
        draw = self.draws[self.calls % len(self.draws)]
        self.calls += 1
        start = time.perf_counter()
        mask = draw(shape, keep, generator, device)
        self.spent[draw] += time.perf_counter() - start
        return mask


@contextmanager
def masks_by(draw: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Training draws its masks with ``draw``: one model's (fused.py) and a stack's (stack.py)."""
    fused.bernoulli = stack.bernoulli = draw
    try:
        yield
    finally:
        fused.bernoulli = stack.bernoulli = NEW


def one_mask(shape: tuple[int, ...], draw, repeats: int = 200) -> float:
    generator = torch.Generator().manual_seed(0)
    draw(shape, 0.7, generator, torch.device("cpu"))
    start = time.perf_counter()
    for _ in range(repeats):
        draw(shape, 0.7, generator, torch.device("cpu"))
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lab09/dropout"])
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {hardware(torch.device('cpu'))}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for shape in [(100, 256), (100, 512)]:
        for _ in range(2):  # twice, alternating
            old, new = one_mask(shape, bernoulli_kernel), one_mask(shape, NEW)
            print(f"one mask {shape}: bernoulli_ {old:.0f} us, fused.bernoulli {new:.0f} us, ratio {new / old:.2f}")
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
                f"bernoulli_ {old / per:.3f} s, all by fused.bernoulli {new / per:.3f} s (ratio {new / old:.2f}, "
                f"{(old - new) / total:.0%} of the run); numbers {'identical' if numbers[0] == numbers[1] == numbers[2] else 'DIFFER'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
