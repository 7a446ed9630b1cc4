"""The user's command, whole process: `dllab compare relu sigmoid --seeds 5 --set train.epochs=1 --set
device=cpu` with --engine batched and --engine sequential, alternating, several repeats, median.

Prints each engine's wall time, the ratio batched / sequential, and the batched command's wall time
over the sum of its runs' training `seconds` (summary.json): what a comparison costs beyond its
training (start-up, data loading, files, tables, plots).
Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_end_to_end.py [--repeats 3] [--epochs 1] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dl_lab.training.device import cpu_name


def timed_compare(engine: str, runs: Path, epochs: int, seeds: int, extra: list[str]) -> tuple[float, float]:
    """(wall seconds of the whole command, sum of its runs' training seconds)."""
    command = [sys.executable, "-m", "dl_lab", "compare", "relu", "sigmoid", "--seeds", str(seeds),
               "--set", f"train.epochs={epochs}", "--set", "device=cpu", "--engine", engine,
               "--runs-dir", str(runs), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    [folder] = runs.glob("compare-*")
    trained = sum(json.loads(p.read_text())["seconds"] for p in folder.glob("*/summary.json"))
    return wall, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="more dllab compare arguments, after --")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"batched": [], "sequential": []}
    trained: dict[str, list[float]] = {"batched": [], "sequential": []}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for engine in ("batched", "sequential") if repeat % 2 == 0 else ("sequential", "batched"):
                wall, seconds = timed_compare(engine, Path(root) / f"{engine}-{repeat}", args.epochs, args.seeds,
                                              args.extra)  # fmt: skip
                walls[engine].append(wall)
                trained[engine].append(seconds)
    print(f"machine: {cpu_name()}; {args.repeats} repeats, medians; compare relu sigmoid --seeds {args.seeds} "
          f"--set train.epochs={args.epochs} --set device=cpu {' '.join(args.extra)}")  # fmt: skip
    for engine in walls:
        wall, seconds = statistics.median(walls[engine]), statistics.median(trained[engine])
        print(f"{engine:>10}: whole command {wall:.2f} s (all: {', '.join(f'{w:.2f}' for w in walls[engine])}); "
              f"runs' training seconds {seconds:.2f}; wall / training {wall / seconds:.2f}")  # fmt: skip
    ratio = statistics.median(walls["batched"]) / statistics.median(walls["sequential"])
    print(f"batched / sequential, whole command: {ratio:.2f} (target <= 0.6)")
    overhead = statistics.median(walls["batched"]) / statistics.median(trained["batched"])
    print(f"batched wall / its runs' training seconds: {overhead:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
