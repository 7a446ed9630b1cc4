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
