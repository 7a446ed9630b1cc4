"""Training-dynamics diagnostics, measured once per epoch on a fixed probe batch (so they stay cheap).

Per Linear layer (input to output): the gradient norm of its weight on the probe batch and the
weight norm (with train.step_grad_norms the engines also average each layer's gradient norm over
the epoch's training steps, measured on the device inside the step: ``train_grad_norm``). Per
hidden layer: the mean and std of the activation outputs, the fraction of saturated outputs
(sigmoid/tanh within 0.02 of a limit), the fraction of dead units (output exactly 0 for every probe
sample, i.e. dead ReLUs), the fraction of symmetric units (a unit whose incoming weights and bias
equal another unit's: they compute the same thing and get the same gradient forever), and a
histogram of the outputs.

The probe runs in eval mode with torch.autograd.grad, so it draws no dropout masks, updates no
batch-norm statistics and leaves .grad alone: turning diagnostics on or off does not change training.
"""

from __future__ import annotations

import torch
from torch import nn

from dl_lab.components.activations import ACTIVATIONS
from dl_lab.components.model import linear_layers
from dl_lab.training.results import SATURATION_MARGIN, Diagnostics

PROBE_SIZE = 512  # training samples in the probe batch (the first ones: fixed across epochs and runs)
HISTOGRAM_BINS = 40


def probe(
    model: nn.Module, loss_fn: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, activation: str
) -> Diagnostics:
    """Measure the model on the probe batch; one host sync at the end."""
    linears = linear_layers(model)
    outputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
        for m in model.modules()
        if _is_activation(m)
    ]
    was_training = model.training
    model.eval()
    try:
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, [layer.weight for layer in linears])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    bounds = ACTIVATIONS[activation].meta.get("bounds")
    with torch.no_grad():
        numbers = [torch.stack([g.norm() for g in grads]), torch.stack([linear.weight.norm() for linear in linears])]
        per_layer = [_layer_stats(out, layer, bounds) for out, layer in zip(outputs, linears)]
        ranges = [_range(out, bounds) for out in outputs]
        histograms = [
            torch.histc((out - low) / (high - low).clamp_min(1e-12), HISTOGRAM_BINS, 0.0, 1.0)
            for out, (low, high) in zip(outputs, ranges)
        ]
        edges = [torch.stack([low, high]) for low, high in ranges]
        flat = torch.cat([*numbers, *(torch.stack(s) for s in per_layer), *histograms, *edges]).tolist()
    k, h = len(linears), len(outputs)
    grad_norm, weight_norm, rest = flat[:k], flat[k : 2 * k], flat[2 * k :]
    stats = [rest[i * 5 : (i + 1) * 5] for i in range(h)]
    rest = rest[5 * h :]
    counts = [rest[i * HISTOGRAM_BINS : (i + 1) * HISTOGRAM_BINS] for i in range(h)]
    ranges = rest[HISTOGRAM_BINS * h :]
    return Diagnostics(
        tuple(grad_norm),
        tuple(weight_norm),
        *(tuple(s[j] for s in stats) for j in range(5)),
        tuple({"edges": ranges[2 * i : 2 * i + 2], "counts": [int(c) for c in counts[i]]} for i in range(h)),
    )


def _is_activation(module: nn.Module) -> bool:
    return not isinstance(module, (nn.Sequential, nn.Linear, nn.Dropout, nn.modules.batchnorm._BatchNorm))


def _layer_stats(out: torch.Tensor, layer: nn.Linear, bounds: tuple[float, float] | None) -> list[torch.Tensor]:
    """mean, std, saturated fraction, dead fraction, symmetric fraction of one hidden layer."""
    if bounds:
        low, high = bounds
        saturated = ((out < low + SATURATION_MARGIN) | (out > high - SATURATION_MARGIN)).float().mean()
    else:
        saturated = torch.zeros((), device=out.device)
    dead = (out == 0).all(dim=0).float().mean()
    rows = torch.cat([layer.weight, layer.bias[:, None]], dim=1)
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    symmetric = (counts[inverse] > 1).float().mean()
    return [out.mean(), out.std(), saturated, dead, symmetric]


def _range(out: torch.Tensor, bounds: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram range as device tensors (no sync): the activation's limits, else the observed range."""
    if bounds:
        return torch.tensor(bounds[0], device=out.device), torch.tensor(bounds[1], device=out.device)
    return out.min(), out.max()
