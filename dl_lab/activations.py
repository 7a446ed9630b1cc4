"""Hidden-layer activations by name (the output layer never has one: CrossEntropyLoss takes logits)."""

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


# name, torch.nn class, help. Activations with parameters are registered below the table.
for _name, _class, _help in [
    ("relu", "ReLU", "max(0, x); the lab's default"),
    ("sigmoid", "Sigmoid", "1 / (1 + e^-x); saturates, so gradients vanish in deep stacks"),
    ("tanh", "Tanh", "hyperbolic tangent; zero-centred but saturates like sigmoid"),
    ("elu", "ELU", "x for x > 0, e^x - 1 otherwise"),
    ("selu", "SELU", "scaled ELU (self-normalizing)"),
    ("gelu", "GELU", "x * Phi(x)"),
    ("softplus", "Softplus", "log(1 + e^x), a smooth ReLU"),
]:
    ACTIVATIONS.register(_name, _help)(_module(_class))


@ACTIVATIONS.register("leaky_relu", "max(slope*x, x); slope from model.leaky_relu_slope", params=("leaky_relu_slope",))
def _leaky_relu(cfg: "ModelConfig") -> "nn.Module":
    from torch import nn

    return nn.LeakyReLU(cfg.leaky_relu_slope)
