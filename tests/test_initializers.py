"""Initializers against the documented formulas, measured on the weights actually produced.

Xavier: std = gain * sqrt(2 / (fan_in + fan_out)); He: std = gain / sqrt(fan_in); uniform schemes
draw from U(-a, a) with a = sqrt(3) * std. With init_gain auto the gain is torch's recommendation for
the layer's activation (ReLU sqrt(2), tanh 5/3, sigmoid 1) and 1 for the output layer.
"""

from __future__ import annotations

import math

import pytest
import torch

from dl_lab.components.initializers import INITIALIZERS
from dl_lab.components.model import build_mlp, linear_layers
from dl_lab.config.schema import ModelConfig

RECOMMENDED_GAIN = {
    "relu": math.sqrt(2),
    "tanh": 5 / 3,
    "sigmoid": 1.0,
    "leaky_relu": math.sqrt(2 / (1 + 0.01**2)),
    "gelu": 1.0,
}
UNIFORM = {"xavier_uniform", "he_uniform", "default"}


def expected_std(init: str, fan_in: int, fan_out: int, gain: float) -> float:
    return {
        "zeros": 0.0,
        "normal": 1.0,
        "default": 1 / math.sqrt(3 * fan_in),  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        "xavier_uniform": gain * math.sqrt(2 / (fan_in + fan_out)),
        "xavier_normal": gain * math.sqrt(2 / (fan_in + fan_out)),
        "he_uniform": gain / math.sqrt(fan_in),
        "he_normal": gain / math.sqrt(fan_in),
    }[init]


SCHEMES = [name for name in INITIALIZERS.names() if name != "rbm"]  # rbm needs data: see test_pretraining


@pytest.mark.parametrize("init", SCHEMES)
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "gelu"])
@pytest.mark.parametrize("shape", [(784, 256), (300, 100), (64, 512)])
def test_weights_match_the_documented_distribution_with_auto_gain(init, activation, shape):
    fan_in, width = shape
    torch.manual_seed(0)
    model = build_mlp(ModelConfig(hidden=(width,), activation=activation, init=init), fan_in, 10)
    hidden, output = linear_layers(model)
    for layer, gain in [(hidden, RECOMMENDED_GAIN[activation]), (output, 1.0)]:
        check(layer.weight.detach(), init, gain)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "he_uniform", "he_normal"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 3.0])
def test_a_numeric_gain_applies_to_every_layer(init, gain):
    torch.manual_seed(1)
    model = build_mlp(ModelConfig(hidden=(400,), activation="relu", init=init, init_gain=gain), 500, 200)
    for layer in linear_layers(model):
        check(layer.weight.detach(), init, gain)


def check(weight: torch.Tensor, init: str, gain: float) -> None:
    fan_out, fan_in = weight.shape
    std = expected_std(init, fan_in, fan_out, gain)
    n = weight.numel()
    if std == 0:
        assert torch.count_nonzero(weight) == 0
        return
    # Sample std of n draws has relative standard error ~ 1/sqrt(2n): 5 sigma is < 7% here.
    assert weight.std().item() == pytest.approx(std, rel=5 / math.sqrt(2 * n) + 0.01)
    assert abs(weight.mean().item()) < 5 * std / math.sqrt(n)
    if init in UNIFORM:
        bound = math.sqrt(3) * std
        assert weight.abs().max().item() <= bound * (1 + 1e-6)
        assert weight.abs().max().item() >= bound * 0.98  # the draws reach the edge of U(-a, a)


def test_biases_keep_pytorchs_default_except_zero_init():
    torch.manual_seed(2)
    for init in ["normal", "xavier_uniform", "he_normal"]:
        layer = linear_layers(build_mlp(ModelConfig(hidden=(100,), init=init), 400, 10))[0]
        assert 0 < layer.bias.detach().abs().max().item() <= 1 / math.sqrt(400)
    zero = linear_layers(build_mlp(ModelConfig(hidden=(100,), init="zeros"), 400, 10))[0]
    assert torch.count_nonzero(zero.bias.detach()) == 0
