"""Build the MLP from a ModelConfig. Building only builds: no device, optimizer or I/O here."""

from __future__ import annotations

from torch import nn

from dl_lab.components.activations import ACTIVATIONS
from dl_lab.components.initializers import INITIALIZERS, layer_gain
from dl_lab.config.schema import ModelConfig


def build_mlp(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """Linear -> [BN] -> activation -> [BN] -> [Dropout] per hidden layer, then a bare Linear.

    The last layer has no activation: CrossEntropyLoss applies log-softmax to the logits itself.
    """
    activation = ACTIVATIONS[cfg.activation].build
    layers: list[nn.Module] = []
    width = in_features
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size))
        if cfg.batchnorm and cfg.batchnorm.position == "before":
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation(cfg))
        if cfg.batchnorm and cfg.batchnorm.position == "after":
            layers.append(nn.BatchNorm1d(size))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    initialize = INITIALIZERS[cfg.init].build
    linears = linear_layers(model)
    for index, layer in enumerate(linears):
        initialize(layer, layer_gain(cfg, output_layer=index == len(linears) - 1))
    return model


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers from input to output."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
