"""Hidden-layer activations by name (the output layer never has one: CrossEntropyLoss takes logits).

Each entry names the nonlinearity that ``torch.nn.init.calculate_gain`` knows it by (``gain``), so
``model.init_gain: auto`` can scale Xavier/He init for it; None means torch recommends no gain (1).
``bounds`` are the output limits of saturating units, for the saturation diagnostic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dl_lab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from dl_lab.config import ModelConfig

ActivationBuilder = Callable[["ModelConfig"], "nn.Module"]
ACTIVATIONS: Registry[ActivationBuilder] = Registry("activation")


def _module(class_name: str) -> ActivationBuilder:
    def build(cfg: "ModelConfig") -> "nn.Module":
        from torch import nn  # imported on first build, not at import time: keeps `dllab --help` fast

        return getattr(nn, class_name)()

    return build


# name, torch.nn class, calculate_gain name, output limits (saturating units only), help.
# Activations with parameters follow the table.
for _name, _class, _gain, _bounds, _help in [
    ("relu", "ReLU", "relu", None, "max(0, x); the lab's default"),
    ("sigmoid", "Sigmoid", "sigmoid", (0.0, 1.0), "1 / (1 + e^-x); saturates, so gradients vanish in deep stacks"),
    ("tanh", "Tanh", "tanh", (-1.0, 1.0), "hyperbolic tangent; zero-centred but saturates like sigmoid"),
    ("elu", "ELU", None, None, "x for x > 0, e^x - 1 otherwise"),
    ("selu", "SELU", "selu", None, "scaled ELU (self-normalizing)"),
    ("gelu", "GELU", None, None, "x * Phi(x)"),
    ("softplus", "Softplus", None, None, "log(1 + e^x), a smooth ReLU"),
]:
    ACTIVATIONS.register(_name, _help, gain=_gain, bounds=_bounds)(_module(_class))


@ACTIVATIONS.register("leaky_relu", "max(slope*x, x); slope from model.leaky_relu_slope",
                      params=("leaky_relu_slope",), gain="leaky_relu")
def _leaky_relu(cfg: "ModelConfig") -> "nn.Module":
    from torch import nn

    return nn.LeakyReLU(cfg.leaky_relu_slope)
