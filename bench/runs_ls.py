"""`dllab runs ls` on a folder of 1,000 small run folders: wall time of the whole command (a fresh
process, as a user runs it), median of 5. Prints whether torch was imported.

Usage: python bench/runs_ls.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dl_lab.training.device import cpu_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        runs = Path(root) / "runs"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dl_lab",
                "train",
                "-c",
                "relu",
                "--runs-dir",
                str(runs),
                "--set",
                "data.dataset=synthetic",
                "--set",
                "device=cpu",
                "--set",
                "train.epochs=1",
                "--set",
                "data.train_subset=200",
            ],
            check=True,
            capture_output=True,
        )
        [model] = runs.iterdir()
        for index in range(1, args.runs):  # copies with their own names, seeds and start times
            copy = runs / f"{model.name}-{index}"
            shutil.copytree(model, copy)
            summary = json.loads((copy / "summary.json").read_text())
            summary.update(
                seed=index, run_dir=str(copy), started_at=f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}+00:00"
            )
            (copy / "summary.json").write_text(json.dumps(summary))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-X", "importtime", "-m", "dl_lab", "runs", "ls", str(runs)],
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(time.perf_counter() - start)
        torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())
        listed = done.stdout.strip().splitlines()[-1]
    print(f"machine: {cpu_kind()}")
    print(
        f"dllab runs ls on {args.runs} run folders: {statistics.median(times):.2f} s (median of 5; '{listed}'); "
        f"torch imported: {torch}"
    )


if __name__ == "__main__":
    main()
