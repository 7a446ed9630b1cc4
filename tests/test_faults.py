"""Fault injection: signals at random points of train, compare and report, then resume; disk full; a failed
allocation; closed pipes. Every ending leaves a true status, and a resumed comparison's numbers are
bit-identical to an uninterrupted one's (CPU)."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST, child_env, sets

from dl_lab.cli.app import app
from dl_lab.runs.store import run_status

# A 2 x 3 comparison whose training takes a few seconds, so random points land in every phase.
# About 12 s on a 2-core CPU: 3 s of start-up, 5 s of training (two stacks of three), 3 s of tables and plots.
GRID = [
    "compare",
    "relu",
    "sigmoid",
    "--seeds",
    "3",
    *sets("device=cpu", "data.dataset=synthetic", "data.train_subset=6000", "train.epochs=10", "model.hidden=[64]"),
]
SMALL = sets(
    "device=cpu", "data.dataset=synthetic", "data.train_subset=600", "train.epochs=2", "model.hidden=[16]"
)  # a comparison of about a second
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
PHASES: list[str] = []  # where each random interruption landed (see the test after the random-point tests)


STARTED: list[subprocess.Popen] = []


def dllab(*args: str, **kwargs) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "dl_lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A test that fails half-way must not leave a 100,000-epoch run training (and a child of pytest
    that other tests would see)."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def outcome(folder: Path) -> dict:
    """What must not depend on interruptions: the table without timings, every run's per-epoch metrics."""
    table = [
        {k: v for k, v in row.items() if k != "seconds_per_run"}
        for row in csv.DictReader((folder / "table.csv").open())
    ]
    metrics = {}
    for run in sorted(folder.glob("*-seed*")):
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        metrics[run.name] = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    return {"table": table, "metrics": metrics}


def measure(runs: Path, args: list[str]) -> tuple[dict, float]:
    """An uninterrupted run of ``args``: its outcome and wall time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dl_lab", *args, "--runs-dir", str(runs)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    [folder] = runs.glob("compare-*")
    return outcome(folder), time.monotonic() - started


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, float]:
    return measure(tmp_path_factory.mktemp("reference"), GRID)


@pytest.fixture(scope="module")
def sequential_reference(tmp_path_factory) -> tuple[dict, float]:
    return measure(tmp_path_factory.mktemp("sequential"), [*GRID, "--engine", "sequential"])


def interrupt_and_resume(runs: Path, signum: int, delay: float, args: list[str] = GRID) -> Path:
    """Start the comparison, send ``signum`` after ``delay`` seconds, check what it left, resume to the end."""
    process = dllab(*args, "--runs-dir", str(runs))
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert "Traceback" not in err, err
    # Handled (128 + n), finished before the signal (0), or killed before Python set its handlers up / by SIGKILL.
    assert process.returncode in (EXIT.get(signum), 0, -signum), (process.returncode, err)
    folders = [f for f in runs.glob("compare-*") if (f / "plan.json").is_file()]
    if not folders:  # stopped before anything was planned: nothing was written but an empty folder at most
        PHASES.append("starting")
        assert all(not any(p for p in f.iterdir() if p.name != ".lock") for f in runs.glob("compare-*"))
        fresh = subprocess.run(
            [sys.executable, "-m", "dl_lab", *args, "--runs-dir", str(runs / "fresh")], capture_output=True, text=True
        )
        assert fresh.returncode == 0, fresh.stderr
        [folder] = (runs / "fresh").glob("compare-*")
        return folder
    [folder] = folders
    if process.returncode == EXIT.get(signum):  # handled once the folder was held: the report says so
        assert json.loads((folder / "summary.json").read_text())["status"] in ("interrupted", "completed"), err
    statuses = [run_status(run) for run in folder.glob("*-seed*")]
    # Nothing says 'running' without a live writer. SIGKILL alone can land between a run folder's mkdir
    # and its first summary (no status, None): resume moves that folder aside like any unfinished run.
    allowed = {"completed", "interrupted"} | ({None} if signum == signal.SIGKILL else set())
    assert set(statuses) <= allowed, statuses
    PHASES.append("training" if "interrupted" in statuses or len(statuses) < 6 else "reporting")
    resumed = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    return folder


POINTS = 7  # random SIGTERM points; scripts/interrupt_sweep.py covers the code line by line, by hand


def random_points(count: int, duration: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.2, duration), 2) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(POINTS))
def test_resume_after_sigterm_at_random_points_gives_the_uninterrupted_table(reference, tmp_path, index):
    expected, duration = reference
    delay = random_points(POINTS, duration, seed=10)[index]
    assert outcome(interrupt_and_resume(tmp_path, signal.SIGTERM, delay)) == expected, f"SIGTERM after {delay}s"


@pytest.mark.slow
def test_the_random_points_landed_in_training_too():
    """The random-point test above is only as good as its points: several must interrupt training."""
    if len(PHASES) < POINTS:
        pytest.skip("runs after the random-point tests")
    print("interruptions landed in:", PHASES)
    assert PHASES.count("training") >= 2, PHASES


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, engine",
    [(signal.SIGINT, "auto"), (signal.SIGHUP, "auto"), (signal.SIGKILL, "auto"), (signal.SIGKILL, "sequential")],
)
def test_resume_after_other_signals_gives_the_uninterrupted_table(
    reference, sequential_reference, tmp_path, signum, engine
):
    expected, duration = reference if engine == "auto" else sequential_reference
    [delay] = random_points(1, duration, seed=int(signum) + len(engine))
    folder = interrupt_and_resume(tmp_path, signum, delay, [*GRID, "--engine", engine])
    assert outcome(folder) == expected, f"signal {signum} after {delay}s"


def test_a_resumed_stack_retrains_whole_and_records_only_its_unfinished_run(runner, tmp_path):
    """A kill between the commits of a stack's runs (some completed, one still 'running') is resumed by
    training the whole stack again: the unfinished run's numbers are those the stack gave it."""
    args = ["compare", "relu", "sigmoid", "--seeds", "3", *SMALL, "--runs-dir", str(tmp_path / "runs")]
    assert runner.invoke(app, args).exit_code == 0
    [folder] = (tmp_path / "runs").glob("compare-*")
    expected = outcome(folder)
    kept = {
        run.name: (run / "summary.json").stat().st_mtime_ns
        for run in folder.glob("*-seed*")
        if run.name != "relu-seed778"
    }
    summary = json.loads((folder / "relu-seed778" / "summary.json").read_text())
    (folder / "relu-seed778" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    result = runner.invoke(app, ["compare", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    # relu and sigmoid share one stack: its five finished runs train again, unrecorded
    assert "1 run(s) trained, 5 kept" in result.stdout and "5 finished run(s) retrained unrecorded" in result.stderr
    assert outcome(folder) == expected
    assert kept == {run: (folder / run / "summary.json").stat().st_mtime_ns for run in kept}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_train_ends_interrupted_on_every_catchable_signal(tmp_path, signum):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({**FAST, "train": {"epochs": 100000}}))
    runs = tmp_path / "runs"
    process = dllab("train", "-c", str(config), "--runs-dir", str(runs))
    metrics = lambda: next(iter(runs.glob("*/metrics.csv")), None)  # noqa: E731
    deadline = time.monotonic() + 60
    while not (metrics() and len(metrics().read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT[signum], err
    run = metrics().parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] >= 2 and summary["finished_at"]
    assert not (run / ".lock").exists() and "Traceback" not in err


def test_a_signal_ignored_at_start_stays_ignored(tmp_path):
    """`nohup dllab ...` ignores SIGHUP and a shell ignores SIGINT for a background job: dllab keeps
    their wish and trains on; SIGTERM, which it was not told to ignore, still ends the run."""
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({**FAST, "train": {"epochs": 100000}}))
    runs = tmp_path / "runs"

    def ignore_hangups_and_interrupts() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = dllab("train", "-c", str(config), "--runs-dir", str(runs), preexec_fn=ignore_hangups_and_interrupts)
    epochs = lambda: len(next(iter(runs.glob("*/metrics.csv"))).read_text().splitlines()) - 1  # noqa: E731
    deadline = time.monotonic() + 60
    while not (list(runs.glob("*/metrics.csv")) and epochs() >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGHUP)
    process.send_signal(signal.SIGINT)
    before = epochs()
    while epochs() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None and epochs() >= before + 2  # still training after both signals
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    [summary] = runs.glob("*/summary.json")
    assert json.loads(summary.read_text())["status"] == "interrupted"


def test_a_killed_train_run_reads_interrupted_and_report_says_so(tmp_path):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({**FAST, "train": {"epochs": 100000}}))
    runs = tmp_path / "runs"
    process = dllab("train", "-c", str(config), "--runs-dir", str(runs))
    deadline = time.monotonic() + 60
    while not list(runs.glob("*/summary.json")) and time.monotonic() < deadline:  # its first summary: running
        time.sleep(0.05)
    [run] = [p.parent for p in runs.glob("*/summary.json")]
    assert run_status(run) == "running"  # alive: it holds the lock
    process.kill()
    process.wait()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # SIGKILL cannot be caught...
    assert run_status(run) == "interrupted"  # ...but the lock died with the process
    report = subprocess.run(
        [sys.executable, "-m", "dl_lab", "report", str(runs), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 2 and "no completed runs" in report.stderr
    assert f"{run}: interrupted" in report.stderr


def test_a_killed_report_leaves_whole_pictures_and_can_be_redone(tmp_path, runner):
    args = ["compare", "relu", "sigmoid", "--seeds", "2", *SMALL, "--runs-dir", str(tmp_path / "runs")]
    assert runner.invoke(app, args).exit_code == 0
    [folder] = (tmp_path / "runs").glob("compare-*")
    out = tmp_path / "report"
    for delay in random_points(4, 3.0, seed=7):
        process = dllab("report", str(folder), "--out", str(out))
        time.sleep(delay)
        process.kill()
        process.wait()
        for picture in out.glob("*.png"):  # never 0 bytes, never half: PNG signature to IEND chunk
            data = picture.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), picture
    done = subprocess.run(
        [sys.executable, "-m", "dl_lab", "report", str(folder), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_disk_full_while_training_ends_failed_with_the_reason(runner, fast_config, tmp_path, monkeypatch):
    """ENOSPC injected into every new file after the run has started: the summary is rewritten in place."""
    import dl_lab.runs.store

    real = dl_lab.runs.store.tempfile.mkstemp
    calls = {"n": 0}

    def mkstemp(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # config.yaml, env.json, metrics.csv, summary.json, then one epoch's two files
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(dl_lab.runs.store.tempfile, "mkstemp", mkstemp)
    result = runner.invoke(
        app, ["train", "-c", str(fast_config), "--set", "train.epochs=5", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output
    assert "error: training failed: OSError: [Errno 28] No space left on device" in result.stderr
    assert "Traceback" not in result.output
    [summary_file] = tmp_path.glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert summary["epochs"] == 1 == len(list(csv.DictReader(summary_file.with_name("metrics.csv").open())))
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_disk_full_on_a_real_tiny_file_system(tmp_path):
    """The same on a 64 KiB tmpfs in a private mount namespace, where the OS allows one."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a tmpfs")
    config = tmp_path / "fast.yaml"
    config.write_text(
        yaml.safe_dump({**FAST, "data": {"dataset": "synthetic", "train_subset": 300}, "train": {"epochs": 2000}})
    )
    mount = tmp_path / "tiny"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o size=48k tmpfs {mount} || exit 77; "
        f"{sys.executable} -m dl_lab train -c {config} --runs-dir {mount}/runs >/dev/null 2>{mount}/../err.txt; "
        f"echo rc=$?; cat {mount}/runs/*/summary.json; cat {mount}/runs/*/metrics.csv | wc -l"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=child_env()
    )
    if result.returncode == 77 or "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    first, _, rest = result.stdout.partition("\n")
    summary_text, _, rows = rest.strip().rpartition("\n")
    err = (tmp_path / "err.txt").read_text()
    assert first == "rc=1", err
    summary = json.loads(summary_text)
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert 0 < summary["epochs"] == int(rows) - 1 < 2000  # the epochs metrics.csv holds
    assert "Traceback" not in err and "No space left on device" in err


def test_a_failed_allocation_ends_failed_with_error_txt(runner, fast_config, tmp_path, monkeypatch):
    import dl_lab.training.engine

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(dl_lab.training.engine, "build_mlp", no_memory)
    result = runner.invoke(app, ["train", "-c", str(fast_config), "--runs-dir", str(tmp_path / "train")])
    assert result.exit_code == 1 and "can't allocate memory" in result.stderr and "Traceback" not in result.output
    [run] = (tmp_path / "train").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert "DefaultCPUAllocator" in (run / "error.txt").read_text()

    # A stack builds its models through the same engine code (still patched): the comparison fails the same way.
    result = runner.invoke(app, ["compare", str(fast_config), "--seeds", "2", "--runs-dir", str(tmp_path / "compare")])
    assert result.exit_code == 3, result.output
    [folder] = (tmp_path / "compare").glob("compare-*")
    statuses = [run_status(run) for run in folder.glob("*-seed*")]
    assert statuses == ["failed"]  # the stack failed at its first model; the second never started (no folder)
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"


PIPED = {
    "train": (lambda config: ["train", "-c", str(config)], "*/summary.json"),
    "compare": (lambda config: ["compare", str(config), "--seeds", "2"], "compare-*/*-seed*/summary.json"),
}


@pytest.mark.parametrize("command", sorted(PIPED))
def test_closed_pipes_never_stop_a_run(fast_config, tmp_path, command):
    """`dllab train --json | head -1`: output is dropped once the reader is gone; the run completes."""
    runs = tmp_path / "runs"
    args, summaries = PIPED[command]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dl_lab",
            *args(fast_config),
            "--json",
            "--set",
            "train.epochs=20",
            "--runs-dir",
            str(runs),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader goes away before the first line
    process.stderr.close()
    assert process.wait(timeout=300) == 0
    statuses = [run_status(p.parent) for p in runs.glob(summaries)]
    assert statuses and set(statuses) == {"completed"}, statuses


@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_a_run_folder_that_cannot_be_written_fails_the_run_not_the_comparison(
    runner, fast_config, tmp_path, monkeypatch, engine
):
    """Disk full as a run starts (its folder or first files): the run is failed, the comparison exits 3."""
    import dl_lab.experiments.execute

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dl_lab.experiments.execute, "RunRecorder", no_space)
    result = runner.invoke(
        app, ["compare", str(fast_config), "--seeds", "2", "--engine", engine, "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 3, result.output
    assert "run(s) failed or diverged" in result.stderr and "Traceback" not in result.output
    assert not isinstance(result.exception, OSError)
