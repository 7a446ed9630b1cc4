"""The user's command, whole process, with its two ways of stacking: `dllab compare relu sigmoid
--seeds 5 --set train.epochs=1 --set device=cpu --engine batched` with --stacks architecture (one
stack of all ten models, the default) and --stacks variant (a stack per variant), alternating (the
turn order swapped every pair). Prints each command's wall time and its runs' training seconds, the
ratio of training seconds pair by pair, and the medians.

Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_stacks.py [--pairs 6] [--epochs 1] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from compare_end_to_end import timed_compare

from dl_lab.training.device import cpu_kind

MODES = ("architecture", "variant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {cpu_kind()}; compare relu sigmoid --seeds {args.seeds} --set train.epochs={args.epochs}")
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for pair in range(args.pairs):
        for mode in MODES if pair % 2 == 0 else MODES[::-1]:
            with tempfile.TemporaryDirectory() as runs:
                wall, trained, _ = timed_compare("batched", Path(runs), args.epochs, args.seeds, ["--stacks", mode])
            times[mode].append((wall, trained))
            print(f"  --stacks {mode:<12} whole command {wall:.2f} s, training {trained:.2f} s", flush=True)
    ratios = [one[1] / apart[1] for one, apart in zip(times["architecture"], times["variant"])]
    print(f"training seconds, architecture / variant, pair by pair: {' '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  median {statistics.median(ratios):.2f}")
    for mode in MODES:
        walls, trained = zip(*times[mode])
        print(
            f"--stacks {mode}: median whole command {statistics.median(walls):.2f} s, training {statistics.median(trained):.2f} s"
        )


if __name__ == "__main__":
    main()
