"""The names of every option the config can choose, with their help text and the keys each reads.

A torch-free table per concept (activations, initializers, optimizers, datasets): config validation,
`dllab options` and the docs read it, and each component registry (components/) attaches one builder
to every name here, so a name cannot be valid without something that builds it (tests/test_registry.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Choice:
    name: str
    help: str
    params: frozenset[str] = field(default_factory=frozenset)  # the config keys this option reads


class Choices:
    """An ordered table of the names one config key may take, e.g. ``Choices("activation")``."""

    def __init__(self, kind: str, *entries: tuple[str, str] | tuple[str, str, tuple[str, ...]]) -> None:
        self.kind = kind
        self._entries: dict[str, Choice] = {}
        for name, help, *params in entries:
            if name in self._entries:
                raise ValueError(f"duplicate {kind} {name!r}")
            self._entries[name] = Choice(name, help, frozenset(params[0] if params else ()))

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Choice]:
        return iter(self._entries.values())

    def __getitem__(self, name: str) -> Choice:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """'unknown activation 'rleu' (did you mean 'relu'?); allowed: ...'."""
        return (
            f"unknown {self.kind} {name!r}{did_you_mean(str(name), self.names())}; allowed: {', '.join(self.names())}"
        )


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


ACTIVATIONS = Choices(
    "activation",
    ("relu", "max(0, x); the lab's default"),
    ("sigmoid", "1 / (1 + e^-x); saturates, so gradients vanish in deep stacks"),
    ("tanh", "hyperbolic tangent; zero-centred but saturates like sigmoid"),
    ("elu", "x for x > 0, e^x - 1 otherwise"),
    ("selu", "scaled ELU (self-normalizing)"),
    ("gelu", "x * Phi(x)"),
    ("softplus", "log(1 + e^x), a smooth ReLU"),
    ("leaky_relu", "max(slope*x, x); slope from model.leaky_relu_slope", ("leaky_relu_slope",)),
)

INITIALIZERS = Choices(
    "init",
    ("default", "PyTorch's own Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))"),
    ("zeros", "weights and biases 0: every hidden unit stays identical"),
    ("normal", "weights ~ N(0, 1), as torch.nn.init.normal_ (the lab's 'normal')"),
    ("xavier_uniform", "U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))", ("init_gain",)),
    ("xavier_normal", "N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))", ("init_gain",)),
    ("he_uniform", "U(-a, a), a = gain * sqrt(3 / fan_in); ReLU: sqrt(6 / fan_in)", ("init_gain",)),
    ("he_normal", "N(0, std^2), std = gain / sqrt(fan_in); ReLU: sqrt(2 / fan_in)", ("init_gain",)),
    (
        "rbm",
        "greedy layer-wise RBM pre-training (CD-k) of the hidden layers, then fine-tuning; settings in model.rbm",
        ("rbm",),
    ),
)

OPTIMIZERS = Choices(
    "optimizer",
    (
        "sgd",
        "stochastic gradient descent, optional (Nesterov) momentum",
        ("lr", "weight_decay", "momentum", "nesterov"),
    ),
    ("adam", "Adam (the lab's optimizer)", ("lr", "weight_decay", "betas", "eps")),
    ("adamw", "Adam with decoupled weight decay", ("lr", "weight_decay", "betas", "eps")),
    (
        "rmsprop",
        "RMSprop: steps scaled by a running RMS of the gradients",
        ("lr", "weight_decay", "momentum", "alpha", "eps", "centered"),
    ),
    (
        "adagrad",
        "Adagrad: per-parameter steps shrinking with accumulated squared gradients",
        ("lr", "weight_decay", "lr_decay", "eps"),
    ),
)

DATASETS = Choices(
    "dataset",
    ("mnist", "MNIST handwritten digits (torchvision), 60k train / 10k test"),
    ("fashion-mnist", "Fashion-MNIST clothing images (torchvision), 60k / 10k"),
    ("synthetic", "in-process 10-class 784-feature data, no files (tests, offline smoke runs)"),
)
