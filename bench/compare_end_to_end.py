"""The user's command, whole process: `dllab compare relu sigmoid --seeds 5 --set train.epochs=1 --set
device=cpu` with --engine batched and --engine sequential, alternating, several repeats, median.

Prints each engine's wall time, the ratio batched / sequential, and the batched command's wall time
over the sum of its runs' training `seconds` (summary.json), and per command the time outside those
seconds (median of wall minus training, repeat by repeat): what a comparison costs beyond its
training (start-up, data loading, files, tables, plots).
With --baseline DIR (a checkout of another commit, e.g. `git worktree add /tmp/base <commit>`) the
same commands also run that version's dl_lab, interleaved with this one's, and both are printed.
Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_end_to_end.py [--repeats 3] [--epochs 1] [--seeds 5]
       [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from dl_lab.training.device import cpu_kind


class Timed(NamedTuple):
    wall: float  # seconds of the whole command
    trained: float  # the sum of its runs' training seconds (summary.json)
    faults: int  # the page faults it took (minor: fresh pages from the kernel, no disk)


def timed_compare(
    engine: str,
    runs: Path,
    epochs: int,
    seeds: int,
    extra: list[str],
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Timed:
    """Time `dllab compare relu sigmoid` with ``engine``; ``source``: run the dl_lab found there
    instead of this one; ``environ``: more environment settings for the command."""
    command = [sys.executable, "-m", "dl_lab", "compare", "relu", "sigmoid", "--seeds", str(seeds),
               "--set", f"train.epochs={epochs}", "--set", "device=cpu", "--engine", engine,
               "--runs-dir", str(runs), *extra]  # fmt: skip
    env = {**os.environ, **(environ or {}), **({"PYTHONPATH": str(source)} if source else {})}
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=source)
    wall = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    [folder] = runs.glob("compare-*")
    trained = sum(json.loads(p.read_text())["seconds"] for p in folder.glob("*/summary.json"))
    return Timed(wall, trained, faults)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="more dllab compare arguments, after --")
    parser.add_argument("--baseline", type=Path, help="a checkout of another version to time alongside")
    args = parser.parse_args()
    versions = {"this": None, **({f"baseline ({args.baseline})": args.baseline.resolve()} if args.baseline else {})}
    walls = {(v, e): [] for v in versions for e in ("batched", "sequential")}
    trained = {key: [] for key in walls}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for version, source in versions.items():
                for engine in ("batched", "sequential") if repeat % 2 == 0 else ("sequential", "batched"):
                    runs = Path(root) / f"{len(walls)}-{engine}-{repeat}-{list(versions).index(version)}"
                    timed = timed_compare(engine, runs, args.epochs, args.seeds, args.extra, source)
                    walls[version, engine].append(timed.wall)
                    trained[version, engine].append(timed.trained)
    print(f"machine: {cpu_kind()}; {args.repeats} repeats, medians; compare relu sigmoid --seeds {args.seeds} "
          f"--set train.epochs={args.epochs} --set device=cpu {' '.join(args.extra)}")  # fmt: skip
    for version in versions:
        print(f"{version}:")
        median = {key: statistics.median(values) for key, values in walls.items() if key[0] == version}
        for (_, engine), wall in median.items():
            seconds = statistics.median(trained[version, engine])
            outside = statistics.median(w - t for w, t in zip(walls[version, engine], trained[version, engine]))
            print(f"  {engine:>10}: whole command {wall:.2f} s (all: {', '.join(f'{w:.2f}' for w in walls[version, engine])}); "
                  f"runs' training seconds {seconds:.2f}; wall / training {wall / seconds:.2f}; "
                  f"outside training {outside:.2f} s")  # fmt: skip
        ratio = median[version, "batched"] / median[version, "sequential"]
        print(f"  batched / sequential, whole command: {ratio:.2f} (target <= 0.6)")
        overhead = median[version, "batched"] / statistics.median(trained[version, "batched"])
        print(f"  batched wall / its runs' training seconds: {overhead:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
