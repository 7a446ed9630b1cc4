"""Interrupt a dllab command at every N-th line of dl_lab code it executes, and check what it leaves.

An attacker's test of "every way a process can end leaves a true status": where the random-point tests
in tests/test_faults.py send a signal at random *times* (and mostly land in training), this sweeps the
*code*: start-up, planning, folder creation, the gaps between stacks, the report.

    python scripts/interrupt_sweep.py --every 100            # a small compare, every 100th line
    python scripts/interrupt_sweep.py --every 50 -- train -c configs/relu.yaml --set data.dataset=synthetic ...
    python scripts/interrupt_sweep.py --copy runs/compare-X --every 50 -- compare --resume {copy}
    python scripts/interrupt_sweep.py --copy runs/compare-X --every 50 -- report {copy} --out {runs}/report

Each point is a fresh process that counts line events in dl_lab (sys.settrace) and sends itself the
signal at line N. Lines 1 and 2, the two `try:` lines that open cli/app.main, are left out: the
tracer's KeyboardInterrupt at a `try:` line is raised before the block it opens, where a real signal
never lands (Python delivers signals at calls and backward jumps, and those lines have neither). Afterwards it checks: exit code 0 or 128 + signal, no traceback, every run's
summary.json other than `running`, a comparison folder with a summary.json, no `.tmp` file left
(in the runs or in the point's own dataset cache).
Prints one line per point and the failures in full; exits 1 if any point failed. A point costs a few
seconds (tracing slows the command down), so this is run by hand, not in CI (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

FIRST = 3  # the first line after cli/app.main's two `try:` lines

SMALL_COMPARE = [
    "compare", "relu", "sigmoid", "--seeds", "2", "--set", "device=cpu", "--set", "data.dataset=synthetic",
    "--set", "data.train_subset=200", "--set", "train.epochs=1",
]  # fmt: skip

CHILD = r"""
import os, signal, sys
import dl_lab
n, signum, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
root = os.path.dirname(dl_lab.__file__) + os.sep
count = 0
def local(frame, event, arg):
    global count
    if event == "line":
        count += 1
        if count == n:
            print(f"signal at {frame.f_code.co_filename}:{frame.f_lineno}", file=sys.__stderr__)
            os.kill(os.getpid(), signum)
    return local
def calls(frame, event, arg):
    name = frame.f_code.co_filename
    return local if name.startswith(root) and not name.endswith("signals.py") else None
if n == 0:
    import atexit
    atexit.register(lambda: print(f"lines {count}", file=sys.__stderr__))
sys.argv = ["dllab", *args]
from dl_lab.cli.app import main
sys.settrace(calls)
main()
"""


def run_point(n: int, signum: int, args: list[str], runs: Path, copy: Path | None) -> subprocess.CompletedProcess:
    """One point: with ``copy``, a fresh copy of that folder goes into ``runs`` and {copy} and {runs} in
    the command name the copy and ``runs``; without it, ``--runs-dir runs`` is added to the command.
    Each point gets an empty dataset cache under ``runs``, so the sweep covers writing it."""
    if copy is None:
        args = [*args, "--runs-dir", str(runs)]
    else:
        runs.mkdir(parents=True, exist_ok=True)
        shutil.copytree(copy, runs / copy.name, symlinks=True)
        args = [arg.replace("{copy}", str(runs / copy.name)).replace("{runs}", str(runs)) for arg in args]
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(signum), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DLLAB_CACHE_DIR": str(runs / ".cache")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, even from a background job
    )


def problems(done: subprocess.CompletedProcess, signum: int, runs: Path) -> list[str]:
    found = [] if done.returncode in (0, 128 + signum) else [f"exit code {done.returncode}"]
    found += ["a traceback"] if "Traceback" in done.stderr else []
    for summary in runs.rglob("summary.json"):
        if json.loads(summary.read_text()).get("status") == "running":
            found.append(f"{summary.parent.name} is still 'running'")
    for folder in runs.glob("compare-*"):
        if not (folder / "summary.json").is_file():
            found.append(f"{folder.name} has no summary.json")
    found += [f"left {path.relative_to(runs)}" for path in runs.rglob("*.tmp")]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=100, help="interrupt at lines 3, 3+EVERY, 3+2*EVERY, ...")
    parser.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM", "SIGHUP"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--copy", type=Path, help="a folder copied afresh for every point; {copy} in the command names the copy"
    )
    parser.add_argument("command", nargs="*", help="the dllab command (default: a small synthetic compare)")
    options = parser.parse_args()
    signum = int(getattr(signal, options.signal))
    args = options.command or SMALL_COMPARE
    work = Path(tempfile.mkdtemp(prefix="dllab-sweep-"))
    counted = run_point(0, signum, args, work / "count", options.copy)
    total = int(counted.stderr.rsplit("lines ", 1)[-1].split()[0])
    print(f"{' '.join(args)}: {total} lines of dl_lab code; {options.signal} at every {options.every}th", flush=True)

    def point(n: int) -> tuple[int, subprocess.CompletedProcess, list[str]]:
        runs = work / str(n)
        done = run_point(n, signum, args, runs, options.copy)
        found = problems(done, signum, runs)
        if not found:
            shutil.rmtree(runs, ignore_errors=True)
        return n, done, found

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(options.jobs) as pool:
        for n, done, found in pool.map(point, range(FIRST, total + 1, options.every)):
            where = next((line for line in done.stderr.splitlines() if line.startswith("signal at")), "no signal")
            print(f"{n:6d}  exit {done.returncode:3d}  {where}  {'; '.join(found) or 'ok'}", flush=True)
            if found:
                failed += 1
                print("        " + done.stderr[-1500:].replace("\n", "\n        "), flush=True)
    print(
        f"{failed} of {len(range(FIRST, total + 1, options.every))} points failed; kept in {work}"
        if failed
        else "all ok"
    )
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
