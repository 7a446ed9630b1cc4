"""Greedy layer-wise RBM pre-training for ``model.init: rbm`` (Hinton & Salakhutdinov, 2006).

Each hidden layer is first trained as a Bernoulli-Bernoulli restricted Boltzmann machine with
contrastive divergence (CD-k): the first RBM on the pixels (which must lie in [0, 1]), each next one
on the previous layer's hidden probabilities. Its weights and hidden biases are then copied into the
MLP's Linear layer, and the whole network is fine-tuned with backprop by the usual training loop.
RBM hidden units are sigmoid units, so the copied features match a sigmoid network best; with other
activations they are still a data-dependent starting point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from dl_lab.components.model import linear_layers
from dl_lab.components.sampling import bernoulli_sample
from dl_lab.config.schema import RbmConfig

# on_epoch(layer, epoch, reconstruction_error, seconds): layer is the 1-based hidden layer; the error is the
# mean squared error per visible unit after one up-down pass
EpochCallback = Callable[[int, int, float, float], None]


class PretrainingDiverged(Exception):
    """An RBM's reconstruction error or weights became non-finite (nan or inf): what fine-tuning would
    start from is not a network. Raised instead of reporting that epoch (the epochs before are kept)."""

    def __init__(self, layer: int, epoch: int, error: float) -> None:
        what = f"reconstruction error became {error}" if not math.isfinite(error) else "weights became non-finite"
        super().__init__(f"RBM pre-training: layer {layer}'s {what} at epoch {epoch}")
        self.layer, self.epoch = layer, epoch


@torch.no_grad()
def pretrain_rbm(
    model: nn.Module, inputs: torch.Tensor, cfg: RbmConfig, order: torch.Generator, on_epoch: EpochCallback
) -> None:
    """Pre-train every hidden Linear layer of ``model`` in place, reporting each epoch to ``on_epoch``;
    raises PretrainingDiverged when an epoch leaves a non-finite error or weights."""
    for index, layer in enumerate(linear_layers(model)[:-1], start=1):
        weight, hidden_bias = _train_rbm(inputs, layer.out_features, cfg, order, index, on_epoch)
        layer.weight.copy_(weight)
        layer.bias.copy_(hidden_bias)
        inputs = torch.sigmoid(inputs @ weight.T + hidden_bias)  # the next RBM's data


def _train_rbm(
    data: torch.Tensor, hidden: int, cfg: RbmConfig, order: torch.Generator, index: int, on_epoch: EpochCallback
) -> tuple[torch.Tensor, torch.Tensor]:
    n, visible = data.shape
    device = data.device
    # Hinton's "practical guide": small random weights, zero hidden biases, visible biases at the log-odds
    # of each unit's mean activity.
    weight = torch.randn(hidden, visible, device=device) * 0.01
    hidden_bias = torch.zeros(hidden, device=device)
    mean = data.mean(0).clamp(1e-3, 1 - 1e-3)
    visible_bias = torch.log(mean / (1 - mean))
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        error = torch.zeros((), device=device)
        permutation = torch.randperm(n, generator=order).to(device)
        for first in range(0, n, cfg.batch_size):
            v0 = data.index_select(0, permutation[first : first + cfg.batch_size])
            ph0 = torch.sigmoid(v0 @ weight.T + hidden_bias)
            h = bernoulli_sample(ph0)
            for step in range(cfg.k):
                pv = torch.sigmoid(h @ weight + visible_bias)
                if step == 0:
                    error += (v0 - pv).square().sum()  # one up-down pass from the data
                ph = torch.sigmoid(pv @ weight.T + hidden_bias)
                h = bernoulli_sample(ph)
            rate = cfg.lr / v0.shape[0]
            weight += rate * (ph0.T @ v0 - ph.T @ pv)
            visible_bias += rate * (v0 - pv).sum(0)
            hidden_bias += rate * (ph0 - ph).sum(0)
        mean_error = error.item() / (n * visible)
        if not (math.isfinite(mean_error) and torch.isfinite(weight).all()):  # one more host sync per epoch
            raise PretrainingDiverged(index, epoch, mean_error)
        on_epoch(index, epoch, mean_error, time.perf_counter() - start)
    return weight, hidden_bias
