"""RBM pre-training (init: rbm): reconstruction improves, weights land in the MLP, the run records it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, MNIST_ROOT, needs_mnist

from dl_lab.cli.app import app
from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.components.model import build_mlp, linear_layers
from dl_lab.components.pretraining import pretrain_rbm
from dl_lab.config.schema import DataConfig, ModelConfig, RbmConfig
from dl_lab.training.results import PretrainEpoch

CPU = torch.device("cpu")


def pretrain(data, hidden=(64, 32), epochs=4):
    torch.manual_seed(0)
    model = build_mlp(ModelConfig(hidden=hidden, activation="sigmoid", init="rbm"), data.num_features, 10)
    before = [layer.weight.detach().clone() for layer in linear_layers(model)]
    records = []
    pretrain_rbm(
        model,
        data.train.x,
        RbmConfig(epochs=epochs, lr=0.1, k=1, batch_size=20),
        torch.Generator().manual_seed(0),
        lambda *epoch: records.append(PretrainEpoch(*epoch)),
    )
    return model, before, records


def assert_error_falls_for_every_layer(records, layers):
    assert [(r.layer, r.epoch) for r in records] == [(layer, e) for layer in range(1, layers + 1) for e in range(1, 5)]
    for layer in range(1, layers + 1):
        errors = [r.reconstruction_error for r in records if r.layer == layer]
        assert errors[-1] < 0.85 * errors[0], errors
        assert all(later <= earlier * 1.02 for earlier, later in zip(errors, errors[1:])), errors


def test_each_layers_reconstruction_error_falls_and_weights_are_copied_in():
    data = load_dataset(DataConfig(dataset="synthetic", train_subset=1500), DataRoot(Path("/x"), "t"), CPU)
    model, before, records = pretrain(data)
    assert_error_falls_for_every_layer(records, layers=2)
    hidden1, hidden2, output = linear_layers(model)
    assert not torch.equal(hidden1.weight, before[0]) and not torch.equal(hidden2.weight, before[1])
    assert torch.equal(output.weight, before[2])  # the output layer is left for fine-tuning
    assert hidden1.weight.abs().max() < 5  # CD updates from 0.01-scale weights, not a blow-up


@needs_mnist
def test_reconstruction_error_falls_on_an_mnist_subset():
    data = load_dataset(DataConfig(dataset="mnist", download=False, train_subset=2000), DataRoot(MNIST_ROOT, "t"), CPU)
    _, _, records = pretrain(data, hidden=(128, 64))
    assert_error_falls_for_every_layer(records, layers=2)


def test_an_rbm_run_records_pretraining_in_its_files(runner, write_config, tmp_path):
    config = write_config(
        {
            **FAST,
            "train": {"epochs": 1},
            "model": {"hidden": [32, 16], "activation": "sigmoid", "init": "rbm", "rbm": {"epochs": 2}},
        }
    )
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    errors = summary["pretraining"]["reconstruction_error"]
    assert len(errors) == 2 and all(len(layer) == 2 for layer in errors)
    folder = Path(summary["run_dir"])
    rows = list(csv.DictReader((folder / "pretrain_metrics.csv").open()))
    assert [(r["layer"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert float(rows[1]["reconstruction_error"]) == pytest.approx(errors[0][1], abs=1e-6)
    assert "rbm layer 2 epoch 2/2" in result.stderr


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.init=rbm", "data.normalize=true"], "need pixels in [0, 1]"),
        (["model.rbm.epochs=3"], "init normal does not use rbm"),
        (["model.init_gain=2"], "init normal does not use init_gain"),
        (["model.init=rbm", "model.rbm.k=0"], "model.rbm.k"),
    ],
)
def test_rbm_and_gain_settings_are_validated(runner, fast_config, tmp_path, overrides, words):
    args = [arg for item in overrides for arg in ("--set", item)]
    result = runner.invoke(app, ["train", "-c", str(fast_config), *args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and words in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


RBM_RUN = {**FAST, "train": {"epochs": 1}, "model": {"hidden": [32, 16], "activation": "sigmoid", "init": "rbm"}}


def test_a_diverging_rbm_ends_its_run_as_diverged_and_names_model_rbm_lr(runner, write_config, tmp_path):
    """RBM pre-training at an lr that overflows float32: the run stops there as diverged (exit 3), says
    where and which key to change, and writes no nan into its JSON (the diverged epoch is not recorded)."""
    config = write_config({**RBM_RUN, "model": {**RBM_RUN["model"], "rbm": {"epochs": 2, "lr": 1e300}}})
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 3, result.output
    assert "RBM pre-training: layer 1's" in result.stderr and "at epoch 1" in result.stderr
    assert "a smaller model.rbm.lr usually helps" in result.stderr and "optimizer.lr" not in result.stderr
    summary = _strict_json(result.stdout)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"] == {"pretraining_layer": 1, "pretraining_epoch": 1}
    folder = Path(summary["run_dir"])
    assert _strict_json((folder / "summary.json").read_text())["status"] == "diverged"
    assert list(csv.DictReader((folder / "metrics.csv").open())) == []  # fine-tuning never started
    pretrain = folder / "pretrain_metrics.csv"
    assert not pretrain.exists() or list(csv.DictReader(pretrain.open())) == []  # nor any pre-training epoch


def test_a_run_whose_rbm_diverges_leaves_its_stack_and_the_others_train_as_alone():
    from dl_lab.training.engine import Observer, train
    from dl_lab.training.stack import train_batched

    def make(seed: int, lr: float):
        from dl_lab.config.schema import ExperimentConfig

        model = {**RBM_RUN["model"], "rbm": {"epochs": 1, "lr": lr}}
        return ExperimentConfig.model_validate({**RBM_RUN, "name": "r", "seed": seed, "model": model})

    good, bad, other = make(1, 0.05), make(2, 1e300), make(3, 0.05)
    data = load_dataset(good.data, DataRoot(Path("/x"), "t"), CPU)
    results = train_batched([good, bad, other], data, CPU, Observer())  # rbm settings stack together
    assert [r.status for r in results] == ["completed", "diverged", "completed"]
    assert results[1].history == () and results[1].pretraining == ()
    assert "RBM pre-training: layer 1's" in results[1].error
    for config, stacked in ((good, results[0]), (other, results[2])):
        alone = train(config, data, CPU, Observer())
        errors = [[(e.layer, e.epoch, e.reconstruction_error) for e in r.pretraining] for r in (stacked, alone)]
        assert errors[0] == errors[1]  # pre-training runs model by model, before stacking
        assert stacked.final.test_acc == pytest.approx(alone.final.test_acc, abs=2e-3)
        assert stacked.final.train_loss == pytest.approx(alone.final.train_loss, rel=1e-3)
    lone_bad = train(bad, data, CPU, Observer())
    assert (lone_bad.status, lone_bad.history) == ("diverged", ())
