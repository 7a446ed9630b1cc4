"""Reproduce the lab09 results: every preset over several seeds, a Markdown table against the lab.

Usage: DLLAB_DATA_DIR=../shared/data python scripts/lab09.py --seeds 3 [--presets xavier,deep] [--device cpu]
Runs land in --runs-dir (default runs/lab09-<time>); the table goes to stdout (paste into docs/lab09.md).
Each preset's published test accuracy is from the lab notebooks. The extra column evaluates the trained
model the way the original notebooks did: on raw 0-255 test pixels, although training used [0, 1].
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from dl_lab.cli.progress import PlainProgress
from dl_lab.experiments.execute import prepare, run_one
from dl_lab.runs.store import create_run_dir
from dl_lab.training.engine import evaluate_model
from dl_lab.training.events import Observer, Observers

PUBLISHED = {  # preset -> (test_acc, test_loss) from the lab; None where the lab gives none
    "softmax": (0.8944, None),
    "nn_normal": (0.9423, None),
    "xavier": (0.9805, None),
    "deep": (0.9819, None),
    "dropout": (0.9772, None),
    "he": (None, None),
    "sigmoid": (None, None),
    "zeros": (None, None),
    "rbm": (None, None),
    "batchnorm": (0.97, 0.093),
    "no_batchnorm": (0.96, 0.168),
}


class RawPixelAccuracy(Observer):
    """Accuracy on test pixels scaled back to 0..255, as the original notebooks evaluated."""

    def __init__(self) -> None:
        self.value = float("nan")

    def run_finished(self, run, model, data) -> None:
        raw = type(data.test)(data.test.x * 255.0, data.test.y)
        _, correct = evaluate_model(model, raw)
        self.value = correct.item() / len(raw)


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PUBLISHED))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs-dir", type=Path, help="default: a new runs/lab09-<time>")
    args = parser.parse_args()
    args.runs_dir = args.runs_dir or create_run_dir(Path("runs"), "", prefix="lab09-")
    rows = []
    for preset in args.presets.split(","):
        finals, raw_accs, seconds = [], [], []
        for seed in range(1, args.seeds + 1):
            prepared = prepare(f"lab09/{preset}", [f"seed={seed}", f"device={args.device}"], os.environ)
            raw = RawPixelAccuracy()
            summary = run_one(prepared, args.runs_dir, Observers([PlainProgress(sys.stderr, args.device), raw]))
            if summary.status != "completed" or summary.final is None:
                sys.exit(f"{preset} seed {seed}: {summary.status} ({summary.error})")
            finals.append(summary.final)
            raw_accs.append(raw.value)
            seconds.append(summary.seconds or 0.0)
        acc = [f.test_acc for f in finals]
        loss = [f.test_loss for f in finals]
        published_acc, published_loss = PUBLISHED[preset]
        diff = f"{100 * (statistics.mean(acc) - published_acc):+.2f}" if published_acc else "—"
        rows.append(
            f"| {preset} | {published_acc or '—'} | {mean_std(acc)} | {diff} | {published_loss or '—'} | "
            f"{mean_std(loss)} | {statistics.mean(raw_accs):.4f} | {statistics.mean(seconds):.0f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Seeds 1..{args.seeds} on {args.device}; runs in {args.runs_dir}\n")
    print(
        "| preset | lab test_acc | ours test_acc (mean ± std) | diff (points) | lab test_loss | ours test_loss | "
        "ours on 0–255 test pixels | s/run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
