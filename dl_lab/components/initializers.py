"""Weight initialization schemes by name, applied to every Linear layer (output layer included).

Like the lab, schemes set the weights and keep PyTorch's default biases, except ``zeros``, which
zeroes both so that every hidden unit is identical (the symmetry problem). Xavier and He take a
gain: with ``model.init_gain: auto`` it is the one torch recommends for the layer's activation
(``calculate_gain``), and 1 for the output layer, which has none.

    Xavier: std = gain * sqrt(2 / (fan_in + fan_out)),  uniform bound a = sqrt(3) * std
    He:     std = gain / sqrt(fan_in),                    uniform bound a = sqrt(3) * std
            (ReLU: gain sqrt(2), so std = sqrt(2 / fan_in) and a = sqrt(6 / fan_in))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from dl_lab.components.activations import ACTIVATIONS
from dl_lab.components.registry import Registry
from dl_lab.config import choices

if TYPE_CHECKING:
    from torch import nn

    from dl_lab.config.schema import ModelConfig

Initializer = Callable[["nn.Linear", float], None]  # (layer, gain)
INITIALIZERS: Registry[Initializer] = Registry(choices.INITIALIZERS)


def layer_gain(cfg: ModelConfig, output_layer: bool) -> float:
    """The gain for one Linear layer: init_gain if a number, else the activation's recommended gain."""
    if cfg.init_gain != "auto":
        return float(cfg.init_gain)
    nonlinearity = None if output_layer else ACTIVATIONS[cfg.activation].meta.get("gain")
    if nonlinearity is None:
        return 1.0
    from torch.nn import init

    return init.calculate_gain(nonlinearity, cfg.leaky_relu_slope if nonlinearity == "leaky_relu" else None)


@INITIALIZERS.register("default")
def _default(layer: nn.Linear, gain: float) -> None:
    layer.reset_parameters()


@INITIALIZERS.register("zeros")
def _zeros(layer: nn.Linear, gain: float) -> None:
    from torch.nn import init  # lazy, as in activations

    init.zeros_(layer.weight)
    init.zeros_(layer.bias)


@INITIALIZERS.register("normal")
def _normal(layer: nn.Linear, gain: float) -> None:
    from torch.nn import init

    init.normal_(layer.weight)


@INITIALIZERS.register("xavier_uniform")
def _xavier_uniform(layer: nn.Linear, gain: float) -> None:
    from torch.nn import init

    init.xavier_uniform_(layer.weight, gain=gain)


@INITIALIZERS.register("xavier_normal")
def _xavier_normal(layer: nn.Linear, gain: float) -> None:
    from torch.nn import init

    init.xavier_normal_(layer.weight, gain=gain)


@INITIALIZERS.register("he_uniform")
def _he_uniform(layer: nn.Linear, gain: float) -> None:
    bound = math.sqrt(3.0) * gain / math.sqrt(layer.in_features)
    layer.weight.data.uniform_(-bound, bound)


@INITIALIZERS.register("he_normal")
def _he_normal(layer: nn.Linear, gain: float) -> None:
    layer.weight.data.normal_(0.0, gain / math.sqrt(layer.in_features))


@INITIALIZERS.register("rbm")
def _rbm(layer: nn.Linear, gain: float) -> None:
    layer.reset_parameters()  # placeholder until pre-training (engine) overwrites the hidden layers
