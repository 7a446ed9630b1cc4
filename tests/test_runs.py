"""Run folders: unique names, atomic files, and a summary that never claims an unfinished run."""

from __future__ import annotations

import csv
import json

import yaml

from dl_lab.config.schema import ExperimentConfig
from dl_lab.runs.recorder import METRIC_COLUMNS, RunRecorder
from dl_lab.runs.store import create_run_dir, write_atomic
from dl_lab.training.results import BatchPlan, EpochMetrics, TrainResult

CONFIG = ExperimentConfig(name="unit")
ENV = {"device": "cpu", "device_name": "test"}


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch, 1.0 / epoch, 0.5, 0.9 / epoch, 0.6, 0.1)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    folders = {create_run_dir(tmp_path / "runs", "same") for _ in range(5)}
    assert len(folders) == 5 and all(f.is_dir() for f in folders)
    assert all(f.name.endswith("same") or f.name.split("same-")[-1].isdigit() for f in folders)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "summary.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_recorder_marks_the_run_running_until_it_finishes(tmp_path):
    folder = create_run_dir(tmp_path, "unit")
    recorder = RunRecorder(folder, CONFIG, ENV)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "env.json", "metrics.csv", "summary.json"]
    assert json.loads((folder / "summary.json").read_text())["status"] == "running"
    assert yaml.safe_load((folder / "config.yaml").read_text())["name"] == "unit"
    recorder.epoch_done(CONFIG, metrics(1))
    running = json.loads((folder / "summary.json").read_text())
    assert running["status"] == "running" and running["epochs"] == 1 and running["finished_at"] is None
    plan = BatchPlan.make(1000, 100, True, False)
    summary = recorder.finish(TrainResult("completed", (metrics(1), metrics(2)), 1.5, plan, 42))
    on_disk = json.loads((folder / "summary.json").read_text())
    assert summary.to_json_dict() == on_disk
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 2 and on_disk["parameters"] == 42
    assert on_disk["final"] == {"train_loss": 0.5, "train_acc": 0.5, "test_loss": 0.45, "test_acc": 0.6}
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert list(rows[0]) == METRIC_COLUMNS == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_failed_run_keeps_its_epochs_and_the_traceback(tmp_path):
    folder = create_run_dir(tmp_path, "unit")
    recorder = RunRecorder(folder, CONFIG, ENV)
    plan = BatchPlan.make(10, 5, True, False)
    summary = recorder.finish(
        TrainResult("failed", (metrics(1),), 0.2, plan, 1, error="Traceback ...\nRuntimeError: boom\n")
    )
    assert summary.status == "failed" and summary.epochs == 1
    assert summary.error == "RuntimeError: boom"
    assert "Traceback" in (folder / "error.txt").read_text()


def test_train_eval_columns_appear_only_when_enabled(tmp_path):
    with_eval = ExperimentConfig.model_validate({"name": "e", "train": {"eval_train": True}})
    for config, columns in [
        (CONFIG, METRIC_COLUMNS),
        (with_eval, METRIC_COLUMNS + ["train_eval_loss", "train_eval_acc"]),
    ]:
        folder = create_run_dir(tmp_path, config.name)
        recorder = RunRecorder(folder, config, ENV)
        recorder.epoch_done(
            config, EpochMetrics(1, 0.5, 0.8, 0.4, 0.85, 1.0, *([0.3, 0.9] if config is with_eval else []))
        )
        rows = list(csv.DictReader((folder / "metrics.csv").open()))
        assert list(rows[0]) == columns
