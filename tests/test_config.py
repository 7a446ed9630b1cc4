"""Config: defaults, extends, --set overrides, presets, and a readable refusal for every bad input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dl_lab.config.loader import load_config, preset_names
from dl_lab.config.schema import BatchNormConfig
from dl_lab.errors import ConfigError


def test_empty_file_gives_the_lab_defaults_and_the_file_stem_as_name(write_config):
    config = load_config(str(write_config("", "my_exp"))).config
    assert config.name == "my_exp"
    assert config.seed == 777 and config.device == "auto"
    assert (config.data.dataset, config.data.batch_size, config.data.drop_last) == ("mnist", 100, True)
    assert (config.model.hidden, config.model.activation, config.model.init) == ((256, 256), "relu", "normal")
    assert (config.optimizer.name, config.optimizer.lr, config.train.epochs) == ("adam", 0.001, 15)
    assert config.model.batchnorm is False and config.model.dropout == 0.0


def test_extends_merges_key_by_key_relative_to_the_child_and_does_not_inherit_the_name(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "parent.yaml").write_text(
        "name: parent\nseed: 1\nmodel: {activation: tanh, dropout: 0.2}\noptimizer: {lr: 0.1}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("extends: base/parent.yaml\nmodel: {dropout: 0.5}\n")
    config = load_config(str(child)).config
    assert config.name == "child"
    assert config.seed == 1 and config.optimizer.lr == 0.1
    assert config.model.activation == "tanh" and config.model.dropout == 0.5


def test_set_overrides_are_parsed_as_yaml_and_win(write_config):
    path = write_config({"model": {"activation": "tanh"}})
    config = load_config(
        str(path),
        [
            "model.activation=sigmoid",
            "model.hidden=[64, 32]",
            "data.drop_last=false",
            "optimizer.lr=1e-2",
            "model.batchnorm={position: after}",
            "name=renamed",
        ],
    ).config
    assert config.model.activation == "sigmoid"
    assert config.model.hidden == (64, 32)
    assert config.data.drop_last is False
    assert config.optimizer.lr == pytest.approx(0.01)
    assert config.model.batchnorm == BatchNormConfig(position="after")
    assert config.name == "renamed"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("false", False),
        ("true", BatchNormConfig(position="before")),
        ("{position: before}", BatchNormConfig(position="before")),
        ("{position: after}", BatchNormConfig(position="after")),
    ],
)
def test_batchnorm_accepts_false_true_or_a_position(write_config, value, expected):
    assert load_config(str(write_config({})), [f"model.batchnorm={value}"]).config.model.batchnorm == expected


def test_resolved_config_round_trips_through_a_file(write_config, tmp_path):
    import yaml

    first = load_config(str(write_config({"model": {"batchnorm": True, "hidden": [8]}}))).config
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump(first.to_dict()))
    assert load_config(str(copy)).config == first


def test_config_names_resolve_to_configs_folder_then_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"relu", "sigmoid"} <= set(preset_names())
    packaged = load_config("sigmoid")
    assert packaged.config.model.activation == "sigmoid" and packaged.config.name == "sigmoid"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sigmoid.yaml").write_text("model: {activation: tanh}\n")
    assert load_config("sigmoid").config.model.activation == "tanh"  # the local folder wins
    assert load_config("configs/sigmoid.yaml").config.model.activation == "tanh"


BAD_INPUTS = [
    # (file content or None for --set only, overrides, words the message must contain)
    ({"model": {"actvation": "relu"}}, [], ["model.actvation", "did you mean 'activation'"]),
    ({"optimzer": {"lr": 0.1}}, [], ["optimzer", "did you mean 'optimizer'"]),
    ({}, ["train.epoch=3"], ["--set", "train.epoch", "did you mean 'epochs'"]),
    ({"train": {"epochs": "many"}}, [], ["train.epochs", "valid integer", "'many'"]),
    ({"data": {"drop_last": "sometimes"}}, [], ["data.drop_last", "boolean"]),
    ({"model": {"dropout": 1.0}}, [], ["model.dropout", "[0, 1)"]),
    ({"model": {"dropout": -0.1}}, [], ["model.dropout", "[0, 1)"]),
    ({"optimizer": {"lr": 0}}, [], ["optimizer.lr", "> 0"]),
    ({"optimizer": {"lr": -1}}, [], ["optimizer.lr", "> 0"]),
    ({"train": {"epochs": 0}}, [], ["train.epochs", ">= 1"]),
    ({"data": {"batch_size": 0}}, [], ["data.batch_size", ">= 1"]),
    ({"model": {"hidden": [256, 0]}}, [], ["model.hidden[1]", ">= 1"]),
    ({"model": {"activation": "rleu"}}, [], ["model.activation", "did you mean 'relu'", "sigmoid, tanh"]),
    ({"model": {"init": "xavier"}}, [], ["model.init", "xavier_uniform"]),
    ({"optimizer": {"name": "adam", "momentum": 0.9}}, [], ["optimizer.momentum", "adam does not use momentum", "sgd"]),
    ({"model": {"batchnorm": {"position": "middle"}}}, [], ["model.batchnorm.position", "'before' or 'after'"]),
    ({"device": "tpu"}, [], ["device", "auto, cpu, cuda or cuda:N"]),
    ({}, ["device=gpu"], ["--set", "device", "cuda:N"]),
    ({}, ["model.activation"], ["--set", "KEY=VALUE"]),
    ({}, ["seed.value=1"], ["--set", "seed", "valid integer"]),
    ({"seed": 1}, ["seed.value=1"], ["--set", "seed is a value, not a section"]),
    (
        {"train": {"diagnostics": False, "step_grad_norms": True}},
        [],
        ["train.step_grad_norms", "needs train.diagnostics: true"],
    ),
]


@pytest.mark.parametrize("content, overrides, words", BAD_INPUTS)
def test_bad_input_is_refused_with_file_key_and_allowed_values(write_config, content, overrides, words):
    path = write_config(content, "bad")
    with pytest.raises(ConfigError) as error:
        load_config(str(path), overrides)
    message = str(error.value)
    if not overrides:
        assert "bad.yaml" in message
    for word in words:
        assert word in message


def test_a_key_set_by_a_parent_is_blamed_on_the_parent(tmp_path):
    (tmp_path / "parent.yaml").write_text("model: {dropout: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"parent\.yaml: model\.dropout"):
        load_config(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("model: {activation: relu\n", ["line", "malformed YAML"]),
        ("seed: [1, 2\n", ["malformed YAML"]),
        ("- 1\n- 2\n", ["expected a mapping"]),
        ("extends: nowhere.yaml\n", ["extends", "no such file", "nowhere.yaml"]),
    ],
)
def test_unreadable_files_are_refused(write_config, text, words):
    with pytest.raises(ConfigError) as error:
        load_config(str(write_config(text, "broken")))
    assert "broken.yaml" in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_missing_file_names_where_it_looked_and_suggests_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_config("sigmod")
    message = str(error.value)
    assert "no such config file" in message and "configs/sigmod.yaml" in message
    assert "did you mean 'sigmoid'" in message


def test_config_is_frozen(write_config):
    config = load_config(str(write_config({}))).config
    with pytest.raises(ValidationError, match="frozen"):
        config.seed = 3  # type: ignore[misc]
