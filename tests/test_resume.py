"""Resume and report as an attacker would use them: nothing completed is deleted or overwritten, only the
planned runs are looked at, old folders stay valid, edited plans are refused, one writer per folder."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sets

from dl_lab.cli.app import app
from dl_lab.experiments.planning import load_plan as plan_of

SYNTH = sets("device=cpu", "data.dataset=synthetic", "data.train_subset=600", "train.epochs=2", "model.hidden=[16]")


def files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden .lock aside) with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def run_files(folder: Path) -> dict[str, str]:
    return {name: digest for name, digest in files(folder).items() if "-seed" in name.split("/")[0]}


def metrics_without_time(run: Path) -> list[list[str]]:
    lines = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    drop = lines[0].index("seconds")
    return [[cell for i, cell in enumerate(line) if i != drop] for line in lines]


@pytest.fixture
def finished(runner, tmp_path) -> Path:
    result = runner.invoke(
        app, ["compare", "relu", "sigmoid", "--seeds", "2", *SYNTH, "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    [folder] = (tmp_path / "runs").glob("compare-*")
    return folder


def status(run: Path) -> str:
    return json.loads((run / "summary.json").read_text())["status"]


def test_resume_touches_only_the_planned_runs_and_moves_unfinished_ones_aside(runner, finished):
    originals = {run: metrics_without_time(finished / run) for run in ("relu-seed778", "sigmoid-seed777")}
    kept = {
        name: digest
        for name, digest in run_files(finished).items()
        if name.startswith(("relu-seed777", "sigmoid-seed778"))
    }
    # Things resume must leave alone: a user's notes folder that looks like a run, and a report written into the folder.
    (finished / "notes").mkdir()
    (finished / "notes" / "summary.json").write_text(json.dumps({"status": "failed", "run_dir": "mine", "seed": 1}))
    assert runner.invoke(app, ["report", str(finished), "--out", str(finished / "my-report")]).exit_code == 0
    others = {name: digest for name, digest in files(finished).items() if name.startswith(("notes", "my-report"))}
    # A failed run, and a run whose folder is gone.
    summary = json.loads((finished / "relu-seed778" / "summary.json").read_text())
    (finished / "relu-seed778" / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    failed_files = files(finished / "relu-seed778")
    for path in sorted((finished / "sigmoid-seed777").iterdir(), reverse=True):
        path.unlink()
    (finished / "sigmoid-seed777").rmdir()

    result = runner.invoke(app, ["compare", "--resume", str(finished)])
    assert result.exit_code == 0, result.output
    assert "2 run(s) trained, 2 kept from before" in result.stdout
    assert "2 finished run(s) retrained unrecorded with their stack" in result.stderr
    after = files(finished)
    assert all(after[name] == digest for name, digest in {**kept, **others}.items())  # untouched, byte for byte
    assert files(finished / ".stale" / "relu-seed778") == failed_files  # moved aside whole, not deleted
    for run, metrics in originals.items():  # retrained exactly as the uninterrupted comparison trained them
        assert status(finished / run) == "completed" and metrics_without_time(finished / run) == metrics


def strip_key(data: dict, dotted: str) -> None:
    section, key = dotted.split(".")
    data[section].pop(key)


def test_resume_of_a_folder_from_an_older_version_keeps_every_run(runner, finished):
    """Written before train.step_grad_norms, train.tf32, train.bf16_matmul and train.compile existed, by the plan.json
    of version 1."""
    import yaml

    for config_file in finished.glob("*-seed*/config.yaml"):
        config = yaml.safe_load(config_file.read_text())
        for key in ("train.step_grad_norms", "train.tf32", "train.bf16_matmul", "train.compile"):
            strip_key(config, key)
        config_file.write_text(yaml.safe_dump(config))
    plan = json.loads((finished / "plan.json").read_text())
    old = {
        "seeds": plan["seeds"],
        "options": plan["options"],
        "variants": [{"label": v["label"], "config": v["config"]} for v in plan["variants"]],
    }
    for variant in old["variants"]:
        strip_key(variant["config"], "train.step_grad_norms")
    (finished / "plan.json").write_text(json.dumps(old))
    # a version-1 plan recorded no stacks: they are derived as that version grouped runs, by activation
    derived = plan_of(finished)
    units = [sorted(derived.runs[i].folder for i in unit.runs) for unit in derived.units]
    assert units == [["relu-seed777", "relu-seed778"], ["sigmoid-seed777", "sigmoid-seed778"]]
    before = run_files(finished)

    result = runner.invoke(app, ["compare", "--resume", str(finished)])
    assert result.exit_code == 0, result.output
    assert "0 run(s) trained, 4 kept from before" in result.stdout
    assert run_files(finished) == before and not (finished / ".stale").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (
            # both variants, which still share a stack
            lambda plan: [v["config"]["optimizer"].update(lr=0.5) for v in plan["variants"]],
            "relu-seed777: a completed run whose config differs from plan.json (optimizer.lr 0.001 there, 0.5 planned)",
        ),
        (lambda plan: plan.update(seeds="many"), "unreadable compare plan (seeds"),
        (lambda plan: plan["runs"][0].update(folder="../../escape"), "is not a plain folder name"),
        (lambda plan: plan["runs"][0].update(variant=7), "names variant 7"),
        (lambda plan: plan["units"][0]["runs"].pop(), "do not cover every run"),
        (
            lambda plan: plan.update(units=[{"runs": [0, 1], "stacked": False}, {"runs": [2, 3], "stacked": True}]),
            "runs that cannot train together",
        ),
        (lambda plan: plan["variants"][1].update(label=plan["variants"][0]["label"]), "label appears twice"),
        (lambda plan: plan["variants"][0]["config"]["model"].update(hidden="wide"), "variants.0.config.model.hidden"),
        (lambda plan: plan.clear(), "unreadable compare plan"),
    ],
)
def test_an_edited_or_broken_plan_is_refused_and_nothing_is_touched(runner, finished, edit, words):
    plan = json.loads((finished / "plan.json").read_text())
    edit(plan)
    (finished / "plan.json").write_text(json.dumps(plan))
    before = files(finished)
    result = runner.invoke(app, ["compare", "--resume", str(finished)])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.output
    assert files(finished) == before


def test_a_plan_that_is_not_json_is_refused(runner, finished):
    (finished / "plan.json").write_text("{not json")
    before = files(finished)
    result = runner.invoke(app, ["compare", "--resume", str(finished)])
    assert result.exit_code == 2 and "unreadable compare plan (not JSON)" in result.stderr
    assert files(finished) == before


def test_a_completed_run_without_its_config_is_kept_and_named(runner, finished):
    (finished / "sigmoid-seed778" / "config.yaml").unlink()
    before = files(finished)
    result = runner.invoke(app, ["compare", "--resume", str(finished)])
    assert result.exit_code == 2 and "sigmoid-seed778: a completed run whose config.yaml is missing" in result.stderr
    assert files(finished) == before


def test_report_never_writes_over_a_run_or_files_it_did_not_write(runner, finished, tmp_path):
    run = finished / "relu-seed777"
    before = files(run)
    result = runner.invoke(app, ["report", str(finished), "--out", str(run)])
    assert result.exit_code == 2 and "holds a run" in result.stderr
    assert files(run) == before
    loose = runner.invoke(app, ["report", str(run), "--out", str(run)])  # a train-style run reported onto itself
    assert loose.exit_code == 2 and files(run) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my table")
    (mine / "summary.json").write_text('{"mine": true}')
    result = runner.invoke(app, ["report", str(finished), "--out", str(mine)])
    assert result.exit_code == 2 and "did not write" in result.stderr
    assert (mine / "table.md").read_text() == "my table" and (mine / "summary.json").read_text() == '{"mine": true}'

    out = tmp_path / "report"
    for _ in range(2):  # a new folder, then the same folder again: its own files may be replaced
        result = runner.invoke(app, ["report", str(finished), "--out", str(out)])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "comparison" and {"table.md", "table.csv", "summary.json", "curves.png"} <= set(
        summary["outputs"]
    )
    (out / "notes.txt").write_text("kept")
    assert runner.invoke(app, ["report", str(finished), "--out", str(out)]).exit_code == 0
    assert (out / "notes.txt").read_text() == "kept"


def test_report_exits_3_on_an_incomplete_comparison(runner, finished):
    summary = json.loads((finished / "sigmoid-seed778" / "summary.json").read_text())
    (finished / "sigmoid-seed778" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    result = runner.invoke(app, ["report", str(finished), "--json"])
    assert result.exit_code == 3, result.output
    assert "sigmoid-seed778: interrupted" in result.stderr  # 'running', but no process holds the lock: killed
    assert f"dllab compare --resume {finished}" in result.stderr
    printed = json.loads(result.stdout)
    assert printed["status"] == "incomplete" and printed["unfinished"] == ["sigmoid-seed778: interrupted"]


def dllab(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dl_lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_writer_per_comparison_and_a_killed_writer_is_taken_over(tmp_path):
    runs = tmp_path / "runs"
    first = dllab(
        "compare",
        "relu",
        "sigmoid",
        "--seeds",
        "2",
        *SYNTH,
        "--set",
        "train.epochs=100000",
        "--engine",
        "sequential",
        "--runs-dir",
        str(runs),
    )
    wait_for(lambda: any(runs.glob("compare-*/*/metrics.csv")))
    [folder] = runs.glob("compare-*")
    second = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stderr
    assert f"in use by process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    report_into = subprocess.run(
        [sys.executable, "-m", "dl_lab", "report", str(folder)], capture_output=True, text=True
    )
    assert report_into.returncode == 2 and f"in use by process {first.pid}" in report_into.stderr
    elsewhere = subprocess.run(
        [sys.executable, "-m", "dl_lab", "report", str(folder), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert elsewhere.returncode in (2, 3), elsewhere.stderr  # 2: no run finished yet; 3: incomplete
    assert "relu-seed777: running" in elsewhere.stderr  # alive: its comparison holds the lock
    assert first.poll() is None  # the refused writers changed nothing for the live one

    first.send_signal(
        signal.SIGKILL
    )  # no handler runs: the run stays 'running' on disk, its lock goes with the process
    first.wait()
    assert status(folder / "relu-seed777") == "running"
    resumed = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder), "--engine", "batched"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 2 and "planned with --engine sequential" in resumed.stderr
    plan = json.loads((folder / "plan.json").read_text())
    for variant in plan["variants"]:  # no run completed, so shortening the planned training contradicts nothing
        variant["config"]["train"]["epochs"] = 1
    (folder / "plan.json").write_text(json.dumps(plan))
    resumed = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "4 run(s) trained, 0 kept" in resumed.stdout
    assert (folder / ".stale" / "relu-seed777" / "summary.json").is_file()  # the killed run, kept for inspection


def test_report_lists_a_run_that_does_not_match_the_plan_as_unfinished(runner, finished):
    plan = json.loads((finished / "plan.json").read_text())
    plan["variants"][1]["config"]["optimizer"]["lr"] = 0.5  # sigmoid's runs no longer match
    (finished / "plan.json").write_text(json.dumps(plan))
    result = runner.invoke(app, ["report", str(finished), "--out", str(finished / "report"), "--json"])
    assert result.exit_code == 3, result.output
    unfinished = json.loads(result.stdout)["unfinished"]
    assert unfinished == [
        f"sigmoid-seed{seed}: a completed run whose config differs from plan.json "
        "(optimizer.lr 0.001 there, 0.5 planned)"
        for seed in (777, 778)
    ]


def test_report_names_a_completed_run_it_cannot_read(runner, finished):
    (finished / "relu-seed778" / "metrics.csv").write_text("epoch,test_acc\n1,not-a-number\n")
    result = runner.invoke(app, ["report", str(finished), "--out", str(finished / "report"), "--json"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["unfinished"] == [
        "relu-seed778: completed, but its summary.json or metrics.csv cannot be read"
    ]


def test_the_original_command_with_resume_appended_finishes_without_retraining(runner, tmp_path):
    command = ["compare", "relu", "sigmoid", "--seeds", "2", *SYNTH, "--runs-dir", str(tmp_path)]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    [folder] = tmp_path.glob("compare-*")
    again = runner.invoke(app, [*command, "--resume", str(folder)])
    assert again.exit_code == 0, again.output
    assert "0 run(s) trained, 4 kept from before" in again.stdout
    for changed, words in [
        (["--seeds", "3"], "--seeds gives 3 seed(s) (777, 778, 779) here, but the comparison was planned with 2"),
        (["--set", "optimizer.lr=0.01"], "variant relu: optimizer.lr is 0.01 here but 0.001 in plan.json"),
    ]:
        refused = runner.invoke(app, [*command, *changed, "--resume", str(folder)])
        assert refused.exit_code == 2, refused.output
        assert words in refused.stderr and "Traceback" not in refused.output
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "relu-seed777",
        "relu-seed778",
        "sigmoid-seed777",
        "sigmoid-seed778",
    ]
