"""Weight initialization schemes by name, applied to every Linear layer (output layer included).

Like the lab, schemes set the weights and keep PyTorch's default biases, except ``zeros``, which
zeroes both so that every hidden unit is identical (the symmetry problem).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from dl_lab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

Initializer = Callable[["nn.Linear"], None]
INITIALIZERS: Registry[Initializer] = Registry("init")


def _weights(function: str, **kwargs: Any) -> Initializer:
    def initialize(layer: "nn.Linear") -> None:
        from torch.nn import init  # lazy, as in activations

        getattr(init, function)(layer.weight, **kwargs)

    return initialize


@INITIALIZERS.register("default", "PyTorch's own Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))")
def _default(layer: "nn.Linear") -> None:
    layer.reset_parameters()


@INITIALIZERS.register("zeros", "weights and biases 0: every hidden unit stays identical")
def _zeros(layer: "nn.Linear") -> None:
    from torch.nn import init

    init.zeros_(layer.weight)
    init.zeros_(layer.bias)


# name, torch.nn.init function, its arguments, help
for _name, _function, _kwargs, _help in [
    ("normal", "normal_", {}, "weights ~ N(0, 1), as torch.nn.init.normal_ (the lab's 'normal')"),
    ("xavier_uniform", "xavier_uniform_", {}, "U(-a, a), a = sqrt(6 / (fan_in + fan_out))"),
    ("xavier_normal", "xavier_normal_", {}, "N(0, std^2), std = sqrt(2 / (fan_in + fan_out))"),
    ("he_uniform", "kaiming_uniform_", {"nonlinearity": "relu"}, "U(-a, a), a = sqrt(6 / fan_in) (Kaiming, ReLU gain)"),
    ("he_normal", "kaiming_normal_", {"nonlinearity": "relu"}, "N(0, std^2), std = sqrt(2 / fan_in) (Kaiming, ReLU gain)"),
]:
    INITIALIZERS.register(_name, _help)(_weights(_function, **_kwargs))
