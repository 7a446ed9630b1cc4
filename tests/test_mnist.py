"""The issue's acceptance runs on real MNIST (skipped with a reason when the files are absent)."""

from __future__ import annotations

import json

from conftest import needs_mnist, sets

from dl_lab.cli.app import app

pytestmark = needs_mnist


def train_json(runner, tmp_path, *args: str) -> dict:
    result = runner.invoke(
        app,
        ["train", *args, *sets("device=cpu", "data.download=false"), "--runs-dir", str(tmp_path), "--json"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_one_epoch_of_the_relu_preset_with_xavier_init_reaches_94_percent(runner, tmp_path):
    summary = train_json(
        runner,
        tmp_path,
        "--config",
        "configs/relu.yaml",
        "--set",
        "train.epochs=1",
        "--set",
        "model.init=xavier_uniform",
    )
    assert summary["status"] == "completed" and summary["steps_per_epoch"] == 600
    assert summary["final"]["test_acc"] >= 0.94


def test_a_mix_no_preset_uses_trains_to_90_percent_in_one_epoch(runner, tmp_path, write_config):
    config = write_config(
        {
            "device": "cpu",
            "data": {"batch_size": 128, "drop_last": False},  # 60000 = 468 * 128 + 96: a partial last batch
            "model": {
                "hidden": [256, 128],
                "activation": "tanh",
                "init": "he_normal",
                "dropout": 0.2,
                "batchnorm": {"position": "after"},
            },
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 1},
        },
        "mix",
    )
    summary = train_json(runner, tmp_path, "--config", str(config))
    assert summary["steps_per_epoch"] == 469 and summary["samples_per_epoch"] == 60000
    assert summary["final"]["test_acc"] >= 0.90
