"""Every shipped preset loads and trains end to end from the CLI (on synthetic data, one short epoch)."""

from __future__ import annotations

import json

import pytest
from conftest import sets

from dl_lab.cli.app import app
from dl_lab.config.loader import load_config, preset_names

LAB09 = [name for name in preset_names() if name.startswith("lab09/")]


def test_the_lab09_suite_is_complete():
    assert sorted(LAB09) == sorted(
        f"lab09/{n}"
        for n in [
            "softmax",
            "nn_normal",
            "xavier",
            "deep",
            "dropout",
            "he",
            "sigmoid",
            "zeros",
            "rbm",
            "batchnorm",
            "no_batchnorm",
        ]
    )


@pytest.mark.parametrize(
    "name, hidden, activation, init, dropout, batchnorm, lr, batch, epochs",
    [
        ("softmax", [], "relu", "normal", 0.0, False, 0.001, 100, 15),
        ("nn_normal", [256, 256], "relu", "normal", 0.0, False, 0.001, 100, 15),
        ("xavier", [256, 256], "relu", "xavier_uniform", 0.0, False, 0.001, 100, 15),
        ("deep", [512, 512, 512, 512], "relu", "xavier_uniform", 0.0, False, 0.001, 100, 15),
        ("dropout", [512, 512, 512, 512], "relu", "xavier_uniform", 0.3, False, 0.001, 100, 15),
        ("he", [256, 256], "relu", "he_normal", 0.0, False, 0.001, 100, 15),
        ("sigmoid", [256, 256], "sigmoid", "normal", 0.0, False, 0.001, 100, 15),
        ("zeros", [256, 256], "relu", "zeros", 0.0, False, 0.001, 100, 15),
        ("rbm", [256, 256], "sigmoid", "rbm", 0.0, False, 0.001, 100, 15),
        ("batchnorm", [32, 32], "relu", "xavier_uniform", 0.0, {"position": "after"}, 0.01, 32, 10),
        ("no_batchnorm", [32, 32], "relu", "xavier_uniform", 0.0, False, 0.01, 32, 10),
    ],
)
def test_lab09_presets_mirror_the_lab(name, hidden, activation, init, dropout, batchnorm, lr, batch, epochs):
    config = load_config(f"lab09/{name}").config.to_dict()
    model = config["model"]
    assert config["name"] == name
    assert (model["hidden"], model["activation"], model["init"], model["dropout"], model["batchnorm"]) == (
        hidden,
        activation,
        init,
        dropout,
        batchnorm,
    )
    assert (config["optimizer"]["name"], config["optimizer"]["lr"]) == ("adam", lr)
    assert (config["data"]["dataset"], config["data"]["batch_size"], config["data"]["drop_last"]) == (
        "mnist",
        batch,
        True,
    )
    assert config["train"]["epochs"] == epochs


@pytest.mark.parametrize("name", sorted(preset_names()))
def test_every_preset_trains_from_any_folder(runner, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # presets resolve from the installed package, not the checkout
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            name,
            *sets(
                "device=cpu",
                "data.dataset=synthetic",
                "data.train_subset=640",
                "train.epochs=1",
                "model.rbm.epochs=1" if "rbm" in name else "seed=5",
            ),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["name"] == name.split("/")[-1]
    assert (tmp_path / "runs").is_dir()


def test_the_shipped_json_schema_is_current_and_validates_every_preset():
    import json

    import jsonschema
    import yaml

    from dl_lab.config.loader import preset_root
    from dl_lab.config.schema import config_file_schema

    root = preset_root()
    shipped = json.loads((root / "config.schema.json").read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(config_file_schema()))  # regenerate: dllab config schema > configs/...
    validator = jsonschema.Draft202012Validator(shipped)
    presets = sorted(root.rglob("*.yaml"))
    assert len(presets) >= 10
    for path in presets:
        header = path.read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / header.split("=", 1)[1]).resolve() == (root / "config.schema.json").resolve()
        assert list(validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))) == [], path
    assert not validator.is_valid({"model": {"activaton": "relu"}})  # an unknown key
    assert not validator.is_valid({"train": {"epochs": "many"}})  # a wrong type
    assert not validator.is_valid({"model": {"dropout": 1.5}})  # out of range
