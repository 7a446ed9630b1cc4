"""`dllab compare --executor ray`: the same numbers as a local compare, on one node or several, with or
without shared storage; lost nodes and Ctrl-C leave a comparison that --resume finishes.

Skipped where Ray is not installed (pip install -e ".[ray]"); .ci/run installs it.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, sets

from dl_lab.cli.app import app

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

GRID = [
    "compare",
    "relu",
    "sigmoid",
    "--seeds",
    "3",
    *sets("device=cpu", "data.dataset=synthetic", "data.train_subset=600", "train.epochs=2", "model.hidden=[32, 16]"),
]


def per_seed_metrics(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Every run's metrics.csv rows, timings left out."""
    out = {}
    for path in sorted(folder.glob("*-seed*/metrics.csv")):
        rows = list(csv.DictReader(path.open()))
        out[path.parent.name] = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    return out


def table_without_timings(folder: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((folder / "table.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds_per_run"} for row in rows]


def same_numbers(one, other) -> bool:
    """Equal, numbers up to float32 rounding: a Ray task uses as many torch threads as CPUs it holds (1
    here), the local command all of them, and a kernel may split a reduction differently across threads
    (on an AMD EPYC a weight gradient's norm differed in its 8th digit, 53.156273 against 53.156277)."""
    if isinstance(one, dict):
        return (
            isinstance(other, dict) and one.keys() == other.keys() and all(same_numbers(one[k], other[k]) for k in one)
        )
    if isinstance(one, list):
        return isinstance(other, list) and len(one) == len(other) and all(map(same_numbers, one, other))
    try:
        return float(one) == pytest.approx(float(other), rel=1e-6, abs=1e-9)
    except (TypeError, ValueError):
        return one == other


def run(runner, tmp_path: Path, name: str, *args: str):
    result = runner.invoke(app, [*GRID, "--runs-dir", str(tmp_path / name), *args])
    folders = list((tmp_path / name).glob("compare-*"))
    return result, folders


def test_a_ray_compare_gives_the_local_numbers_on_a_local_ray_instance(runner, tmp_path):
    local, [local_folder] = run(runner, tmp_path, "local", "--stacks", "variant")  # Ray's default: a task per variant
    assert local.exit_code == 0, local.output
    on_ray, [ray_folder] = run(runner, tmp_path, "ray", "--executor", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    done = sorted(line for line in on_ray.stderr.splitlines() if " done: " in line)  # in the order tasks finish
    assert [line[:14] for line in done] == ["stack 1/2 done", "stack 2/2 done"]
    assert {line.split(": ")[1] for line in done} == {"relu seeds 777–779", "sigmoid seeds 777–779"}
    assert same_numbers(per_seed_metrics(ray_folder), per_seed_metrics(local_folder))
    assert len(per_seed_metrics(ray_folder)) == 6
    assert same_numbers(table_without_timings(ray_folder), table_without_timings(local_folder))
    assert not same_numbers(per_seed_metrics(ray_folder), {}) and not same_numbers([{"a": "1.0"}], [{"a": "1.1"}])
    envs = [json.loads(p.read_text()) for p in ray_folder.glob("*-seed*/env.json")]
    assert all(env["ray_node_id"] for env in envs)  # trained by Ray tasks, which record their node


def start_dllab(args: list[str]) -> subprocess.Popen:
    """dllab in its own process (signals and node removal need the test's main thread)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dl_lab", *args],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture
def two_nodes():
    """A head and a worker node on this machine, one CPU each, so two tasks run on two nodes at once."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.parametrize("collect", [False, True])
def test_a_two_node_cluster_trains_on_both_nodes_into_one_comparison_folder(runner, tmp_path, two_nodes, collect):
    args = ["--executor", "ray", "--address", two_nodes.address, *(["--collect"] if collect else [])]
    # Two variants, one architecture each: two stacks, which the two one-CPU nodes train at the same time.
    result, [folder] = run(runner, tmp_path, "cluster", *args)
    assert result.exit_code == 0, result.output
    nodes = {json.loads(p.read_text())["ray_node_id"] for p in folder.glob("*-seed*/env.json")}
    assert len(nodes) == 2  # the tasks demonstrably ran on both nodes
    assert len(per_seed_metrics(folder)) == 6
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["unfinished"] == []
    runs = [json.loads(p.read_text()) for p in folder.glob("*-seed*/summary.json")]
    assert all(Path(r["run_dir"]).parent.resolve() == folder.resolve() for r in runs)  # --collect: written here


def test_ray_options_are_checked_before_anything_is_written(runner, tmp_path):
    for args, words in [
        (["--address", "x"], "--address: only with --executor ray"),
        (["--executor", "ray", "--cpus-per-task", "0"], "--cpus-per-task: must be > 0"),
        (["--executor", "ray", "--gpus-per-task", "-1"], "--gpus-per-task: must be >= 0"),
    ]:
        result, folders = run(runner, tmp_path, "bad", *args)
        assert result.exit_code == 2 and words in result.stderr and folders == [], result.output


def test_a_node_that_cannot_see_the_folder_is_refused_before_anything_is_written(runner, tmp_path, monkeypatch):
    import dl_lab.experiments.ray_executor as executor

    monkeypatch.setattr(executor, "write_atomic", lambda path, text: None)  # the probe's marker never appears
    (tmp_path / "blind").mkdir()
    result, folders = run(runner, tmp_path, "blind", "--executor", "ray")
    assert result.exit_code == 2, result.output
    assert f"cannot see the folder {tmp_path / 'blind'}" in result.stderr and "--collect" in result.stderr
    assert list((tmp_path / "blind").iterdir()) == []  # refused before anything was written


@pytest.mark.slow
def test_ctrl_c_cancels_the_tasks_and_resume_finishes_only_the_unfinished_runs(tmp_path):
    runs = tmp_path / "runs"
    slow = [
        *["compare", "relu", "--seeds", "2", "--engine", "sequential"],  # two lone runs, one after the other
        # long enough (several seconds a run) that the first is still training when Ctrl-C comes
        *sets(
            "device=cpu", "data.dataset=synthetic", "data.train_subset=6000", "train.epochs=150", "model.hidden=[64]"
        ),
    ]
    process = start_dllab([*slow, "--runs-dir", str(runs), "--executor", "ray", "--cpus-per-task", "2"])
    wait_for(lambda: list(runs.glob("compare-*/*-seed*/metrics.csv")))  # until the first run is training
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    [folder] = runs.glob("compare-*")
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in folder.glob("*-seed*/summary.json")}
    assert "interrupted" in statuses.values() and "running" not in statuses.values(), statuses
    finished = {name for name, status in statuses.items() if status == "completed"}
    resumed = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder), "--executor", "ray"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} kept from before" in resumed.stdout
    after = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*-seed*/summary.json")}
    assert all(summary["status"] == "completed" for summary in after.values()) and len(after) == 2


@pytest.mark.slow
def test_a_node_lost_mid_grid_is_retried_elsewhere_and_nothing_is_lost_or_duplicated(tmp_path, two_nodes):
    runs = tmp_path / "runs"
    grid = [*GRID[:4], "2", *sets("device=cpu", "data.dataset=synthetic", "train.epochs=40", "model.hidden=[64]")]
    process = start_dllab([*grid, "--runs-dir", str(runs), "--executor", "ray", "--address", two_nodes.address])
    worker = two_nodes.worker.node_id

    def training_on_the_worker() -> bool:
        envs = [json.loads(p.read_text()) for p in runs.glob("compare-*/*-seed*/env.json")]
        return any(env.get("ray_node_id") == worker for env in envs) and bool(
            list(runs.glob("compare-*/*-seed*/metrics.csv"))
        )

    wait_for(training_on_the_worker)
    time.sleep(1.0)
    two_nodes.remove_node(two_nodes.worker)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    [folder] = runs.glob("compare-*")
    summaries = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*-seed*/summary.json")}
    assert sorted(summaries) == ["relu-seed777", "relu-seed778", "sigmoid-seed777", "sigmoid-seed778"]
    assert all(s["status"] == "completed" and s["epochs"] == 40 for s in summaries.values())
    nodes = {json.loads(p.read_text())["ray_node_id"] for p in folder.glob("*-seed*/env.json")}
    assert worker not in nodes  # the lost node's runs were retrained on the head
    stale = list((folder / ".stale").glob("*")) if (folder / ".stale").exists() else []
    assert stale, "the lost attempt's unfinished run folders are kept aside, not deleted"


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, {}),
        ({"DLLAB_CACHE_DIR": "off"}, {"DLLAB_CACHE_DIR": "off"}),
        ({"DLLAB_FLUSH_DENORMALS": "off"}, {"DLLAB_FLUSH_DENORMALS": "off"}),  # a process setting: passed as is
        ({"DLLAB_ONEDNN_STACKS": "on"}, {"DLLAB_ONEDNN_STACKS": "on"}),
        ({"DLLAB_KEEP_FREED_MEMORY": "off"}, {"DLLAB_KEEP_FREED_MEMORY": "off"}),
        (
            {"DLLAB_DATA_DIR": "data", "DLLAB_CACHE_DIR": "c"},
            {"DLLAB_DATA_DIR": "{cwd}/data", "DLLAB_CACHE_DIR": "{cwd}/c"},
        ),
    ],
)
def test_workers_get_the_data_and_cache_folders_as_absolute_paths_and_the_process_settings(
    monkeypatch, environ, expected
):
    from dl_lab.experiments import ray_executor

    seen = {}
    fake = type("FakeRay", (), {"init": staticmethod(lambda **kwargs: seen.update(kwargs))})
    monkeypatch.setattr(ray_executor, "import_ray", lambda: fake)
    ray_executor.connect(ray_executor.RayOptions(), environ)
    cwd = str(Path.cwd().resolve())
    assert seen["runtime_env"]["env_vars"] == {k: v.format(cwd=cwd) for k, v in expected.items()}
