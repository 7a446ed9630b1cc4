"""Model building, initializers and optimizers, over every registered option, on small CPU tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dl_lab.components.activations import ACTIVATIONS
from dl_lab.components.model import build_mlp
from dl_lab.components.optimizers import OPTIMIZERS
from dl_lab.config.schema import ModelConfig, OptimizerConfig


def kinds(model: nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in model]


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_activation_builds_and_the_output_layer_has_none(activation):
    extra = {"leaky_relu_slope": 0.2} if activation == "leaky_relu" else {}
    model = build_mlp(ModelConfig(hidden=(16, 8), activation=activation, **extra), 784, 10)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10
    assert len([m for m in model if isinstance(m, nn.Linear)]) == 3
    assert model(torch.randn(4, 784)).shape == (4, 10)


def test_leaky_relu_slope_is_configurable():
    model = build_mlp(ModelConfig(hidden=(4,), activation="leaky_relu", leaky_relu_slope=0.3), 2, 2)
    assert model[1].negative_slope == pytest.approx(0.3)


@pytest.mark.parametrize(
    "batchnorm, expected",
    [
        (False, ["Linear", "ReLU", "Dropout", "Linear"]),
        ({"position": "before"}, ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]),
        ({"position": "after"}, ["Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]),
    ],
)
def test_batchnorm_position_and_dropout_placement(batchnorm, expected):
    model = build_mlp(ModelConfig(hidden=(8,), dropout=0.3, batchnorm=batchnorm), 5, 3)
    assert kinds(model) == expected


def test_no_hidden_layer_is_softmax_regression_and_no_dropout_layer_when_p_is_zero():
    assert kinds(build_mlp(ModelConfig(hidden=()), 784, 10)) == ["Linear"]
    assert "Dropout" not in kinds(build_mlp(ModelConfig(hidden=(4,)), 4, 2))


def test_zero_init_makes_hidden_units_identical():
    model = build_mlp(ModelConfig(hidden=(6,), init="zeros", activation="sigmoid"), 4, 3)
    hidden = model[:2](torch.randn(5, 4))
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))


@pytest.mark.parametrize(
    "name, options",
    [
        ("sgd", {"momentum": 0.9, "nesterov": True}),
        ("sgd", {}),
        ("adam", {"betas": (0.8, 0.99)}),
        ("adamw", {"weight_decay": 0.01, "eps": 1e-6}),
        ("rmsprop", {"alpha": 0.9, "momentum": 0.5, "centered": True}),
        ("adagrad", {"lr_decay": 0.01}),
    ],
)
def test_optimizers_build_with_their_hyper_parameters_and_take_a_step(name, options):
    model = nn.Linear(3, 2)
    cfg = OptimizerConfig(name=name, lr=0.1, **options)
    optimizer = OPTIMIZERS[name].build(model.parameters(), cfg, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.1
    for key, value in options.items():
        assert group[key] == value
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)
