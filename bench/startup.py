"""Startup cost: `dllab --help` and `python -c "import dl_lab"`, median wall time of repeated runs.

Usage: python bench/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(command: list[str], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [
        ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"]),
        ("python -c 'import dl_lab'", [sys.executable, "-c", "import dl_lab"]),
        ("dllab --help", [sys.executable, "-m", "dl_lab", "--help"]),
        ("python -c 'import torch' (for scale)", [sys.executable, "-c", "import torch"]),
    ]
    for label, command in rows:
        print(f"{label:<40} {timed(command, args.repeats):.3f} s")


if __name__ == "__main__":
    main()
