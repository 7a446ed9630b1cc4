"""Hidden-layer activations by name (the output layer never has one: CrossEntropyLoss takes logits).

Each entry names the nonlinearity that ``torch.nn.init.calculate_gain`` knows it by (``gain``), so
``model.init_gain: auto`` can scale Xavier/He init for it; None means torch recommends no gain (1).
``bounds`` are the output limits of saturating units, for the saturation diagnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dl_lab.components.registry import Registry
from dl_lab.config import choices

if TYPE_CHECKING:
    from torch import nn

    from dl_lab.config.schema import ModelConfig

ActivationBuilder = Callable[["ModelConfig"], "nn.Module"]
ACTIVATIONS: Registry[ActivationBuilder] = Registry(choices.ACTIVATIONS)


def _module(class_name: str) -> ActivationBuilder:
    def build(cfg: ModelConfig) -> nn.Module:
        from torch import (
            nn,  # imported on first build, not at import time: keeps `dllab --help` fast
        )

        return getattr(nn, class_name)()

    return build


# name (config.choices), torch.nn class, calculate_gain name, output limits (saturating units only).
# Activations with parameters follow the table.
for _name, _class, _gain, _bounds in [
    ("relu", "ReLU", "relu", None),
    ("sigmoid", "Sigmoid", "sigmoid", (0.0, 1.0)),
    ("tanh", "Tanh", "tanh", (-1.0, 1.0)),
    ("elu", "ELU", None, None),
    ("selu", "SELU", "selu", None),
    ("gelu", "GELU", None, None),
    ("softplus", "Softplus", None, None),
]:
    ACTIVATIONS.register(_name, gain=_gain, bounds=_bounds)(_module(_class))


@ACTIVATIONS.register("leaky_relu", gain="leaky_relu")
def _leaky_relu(cfg: ModelConfig) -> nn.Module:
    from torch import nn

    return nn.LeakyReLU(cfg.leaky_relu_slope)
