"""TensorBoard events, live (train.tensorboard) and exported (`dllab export tensorboard`), read back with
TensorBoard's own reader and checked against metrics.csv, pretrain_metrics.csv and summary.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import FAST, sets
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_runs import metrics
from test_store import locked_by_another_process

from dl_lab.analysis.export import export_tensorboard
from dl_lab.cli.app import app
from dl_lab.config.schema import ExperimentConfig
from dl_lab.runs import tensorboard
from dl_lab.runs.recorder import RunRecorder

FAST_SETS = sets("device=cpu", "data.dataset=synthetic", "train.epochs=2")


def as_written(value):
    """Files hold 6 digits after the point; events hold float32 of the unrounded value (live) or of the file's."""
    return pytest.approx(value, rel=1e-6, abs=6e-7)


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events


def hparams_of(events: EventAccumulator) -> tuple[dict, list[str]]:
    """(hparam name -> value, metric tags) of a run's hparams summaries."""
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[key] = getattr(value, kind)
    return values, [info.name.tag for info in experiment.metric_infos]


def assert_events_match_files(events_folder: Path, run_folder: Path) -> None:
    """Every metrics.csv column (but epoch) at its tag, one point per epoch at step = epoch; the
    pre-training errors; the config as hparams with the final metrics of summary.json."""
    events = read_events(events_folder)
    rows = list(csv.DictReader((run_folder / "metrics.csv").open(encoding="utf-8")))
    assert rows, f"{run_folder} has no epochs"
    tags = events.Tags()["scalars"]
    for column in rows[0]:
        if column == "epoch":
            continue
        expected = [(int(row["epoch"]), float(row[column])) for row in rows if row[column] != ""]
        got = [(point.step, point.value) for point in events.Scalars(tensorboard.tag(column))]
        assert [step for step, _ in got] == [step for step, _ in expected], column
        assert [value for _, value in got] == as_written([value for _, value in expected]), column
    pretraining = run_folder / "pretrain_metrics.csv"
    if pretraining.is_file():
        for row in csv.DictReader(pretraining.open(encoding="utf-8")):
            points = {p.step: p.value for p in events.Scalars(f"pretrain/reconstruction_error_hidden_{row['layer']}")}
            assert points[int(row["epoch"])] == as_written(float(row["reconstruction_error"]))
    summary = json.loads((run_folder / "summary.json").read_text(encoding="utf-8"))
    values, metric_tags = hparams_of(events)
    assert values["status"] == summary["status"]
    assert values["seed"] == summary["seed"] and values["name"] == summary["name"]
    for key, value in summary["final"].items():
        assert f"final/{key}" in metric_tags and f"final/{key}" in tags
        [point] = events.Scalars(f"final/{key}")
        assert (point.step, point.value) == (len(rows), as_written(value))


def compare_relu_sigmoid(runner, runs: Path, *options: str) -> Path:
    """A 2-seed relu/sigmoid comparison on synthetic data; returns its folder."""
    result = runner.invoke(
        app, ["compare", "relu", "sigmoid", "--seeds", "2", *FAST_SETS, *options, "--runs-dir", str(runs)]
    )
    assert result.exit_code == 0, result.output
    return next(runs.glob("compare-*"))


def test_tags_group_columns_by_metric_and_layer():
    assert tensorboard.tag("test_acc") == "accuracy/test"
    assert tensorboard.tag("train_eval_loss") == "loss/train_eval"
    assert tensorboard.tag("grad_norm_2") == "grad_norm/linear_2"
    assert tensorboard.tag("train_grad_norm_1") == "train_grad_norm/linear_1"
    assert tensorboard.tag("act_mean_h1") == "act_mean/hidden_1"
    assert tensorboard.tag("dead_h12") == "dead/hidden_12"
    assert tensorboard.tag("mystery") == "other/mystery"
    assert tensorboard.hparam_value([256, 256]) == "[256, 256]" and tensorboard.hparam_value(None) == "null"


def test_export_of_a_comparison_matches_metrics_csv(runner, tmp_path):
    runs = tmp_path / "runs"
    comparison = compare_relu_sigmoid(runner, runs, *sets("train.eval_train=true"))
    out = tmp_path / "tb"
    result = runner.invoke(app, ["export", "tensorboard", str(comparison), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped"] == [] and len(report["written"]) == 4
    plan = json.loads((comparison / "plan.json").read_text())
    variants = {variant["label"]: variant for variant in plan["variants"]}
    assert variants.keys() == {"relu", "sigmoid"}
    named = sorted(str(p.relative_to(out)) for p in out.glob("*/*/*"))
    assert named == [f"{comparison.name}/{v}/seed{s}" for v in ("relu", "sigmoid") for s in (777, 778)]
    for item in report["written"]:
        assert_events_match_files(Path(item["events"]), Path(item["run"]))
    relu_events = read_events(out / comparison.name / "sigmoid" / "seed778")
    values, _ = hparams_of(relu_events)
    assert values["model.activation"] == "sigmoid" and values["train.eval_train"] is True
    assert values["model.hidden"] == "[256, 256]"

    again = runner.invoke(app, ["export", "tensorboard", str(runs), "--out", str(out)])  # the runs folder itself
    assert again.exit_code == 0, again.output
    assert "exported 0 runs" in again.stdout and again.stderr.count("already exported") == 4
    assert len(list(out.rglob("events.out.tfevents.*"))) == 4  # nothing written twice


def test_live_events_are_written_per_epoch_into_the_run_folder(runner, write_config, tmp_path):
    config = write_config(
        {
            **FAST,
            "train": {"epochs": 2, "tensorboard": True},
            "model": {"hidden": [32, 16], "activation": "sigmoid", "init": "rbm", "rbm": {"epochs": 2}},
            "data": {"dataset": "synthetic", "normalize": False},
        }
    )
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    folder = Path(json.loads(result.stdout)["run_dir"])
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert_events_match_files(folder, folder)  # pre-training included
    values, _ = hparams_of(read_events(folder))
    assert values["model.init"] == "rbm" and values["train.tensorboard"] is True

    out = tmp_path / "tb"
    exported = runner.invoke(app, ["export", "tensorboard", str(folder), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert_events_match_files(out / folder.name, folder)


def test_live_events_of_a_stacked_comparison(runner, tmp_path):
    compare_relu_sigmoid(runner, tmp_path / "runs", "--engine", "batched", *sets("train.tensorboard=true"))
    folders = sorted(p.parent for p in (tmp_path / "runs").glob("compare-*/*/summary.json"))
    assert len(folders) == 4
    for folder in folders:
        assert_events_match_files(folder, folder)


def test_an_interrupted_run_keeps_its_epochs_and_says_so(tmp_path):
    config = ExperimentConfig.model_validate({"name": "cut", "train": {"tensorboard": True, "epochs": 5}})
    recorder = RunRecorder(tmp_path, config, {"device": "cpu", "device_name": "test"})
    recorder.epoch_done(config, metrics(1))
    recorder.epoch_done(config, metrics(2))
    recorder.interrupted()
    events = read_events(tmp_path)
    assert [p.step for p in events.Scalars("loss/train")] == [1, 2]
    values, _ = hparams_of(events)
    assert values["status"] == "interrupted"
    assert [p.step for p in events.Scalars("final/test_acc")] == [2]


def test_missing_writer_is_refused_before_anything_is_written(runner, fast_config, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    runs = tmp_path / "runs"
    result = runner.invoke(
        app, ["train", "-c", str(fast_config), *sets("train.tensorboard=true"), "--runs-dir", str(runs)]
    )
    assert result.exit_code == 2
    assert "train.tensorboard" in result.stderr and 'pip install "dl_lab[tensorboard]"' in result.stderr
    assert "Traceback" not in result.output and not runs.exists()

    result = runner.invoke(
        app, ["compare", "relu", "--seeds", "1", *FAST_SETS, *sets("train.tensorboard=true"), "--runs-dir", str(runs)]
    )
    assert result.exit_code == 2 and "train.tensorboard" in result.stderr and not runs.exists()

    run = tmp_path / "done"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    result = runner.invoke(app, ["export", "tensorboard", str(run), "--out", str(tmp_path / "tb")])
    assert result.exit_code == 2
    assert 'pip install "dl_lab[tensorboard]"' in result.stderr and not (tmp_path / "tb").exists()


def test_export_refuses_what_holds_no_runs_and_skips_unfinished_ones(runner, tmp_path):
    result = runner.invoke(app, ["export", "tensorboard", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["export", "tensorboard", str(tmp_path / "empty"), "--out", str(tmp_path / "tb")])
    assert result.exit_code == 2 and "no runs in" in result.stderr and not (tmp_path / "tb").exists()

    running = tmp_path / "runs" / "live"
    running.mkdir(parents=True)
    RunRecorder(running, ExperimentConfig(name="live"), {"device": "cpu", "device_name": "t"}).epoch_done(
        ExperimentConfig(name="live"), metrics(1)
    )
    with locked_by_another_process(running):  # its writer is alive: the run is running
        result = runner.invoke(app, ["export", "tensorboard", str(tmp_path / "runs"), "--out", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert "still running" in result.stderr and "exported 0 runs" in result.stdout
    # once its writer is gone (killed), the run reads interrupted and is exported as such
    result = runner.invoke(app, ["export", "tensorboard", str(tmp_path / "runs"), "--out", str(tmp_path / "tb")])
    assert result.exit_code == 0 and "exported 1 run " in result.stdout, result.output
    values, _ = hparams_of(read_events(tmp_path / "tb" / "live"))
    assert values["status"] == "interrupted"


def test_a_failed_export_leaves_no_half_written_run(runner, tmp_path, monkeypatch):
    result = runner.invoke(app, ["train", "--config", "relu", *FAST_SETS, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output

    def broken(self, hparams, final):
        raise OSError("disk full")

    monkeypatch.setattr(tensorboard.EventLog, "close", broken)
    out = tmp_path / "tb"
    with pytest.raises(OSError):
        export_tensorboard([tmp_path / "runs"], out)
    assert list(out.iterdir()) == []  # neither the run's folder nor its staging folder


def test_events_that_cannot_be_written_stop_the_events_not_the_run(runner, fast_config, tmp_path, monkeypatch):
    def full(self, row, flush=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard.EventLog, "epoch", full)
    result = runner.invoke(
        app, ["train", "-c", str(fast_config), *sets("train.tensorboard=true"), "--runs-dir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert len(list(Path(summary["run_dir"]).glob("events.out.tfevents.*"))) == 1  # opened, then closed
