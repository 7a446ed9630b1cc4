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

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dl_lab.activations import ACTIVATIONS
from dl_lab.model import linear_layers

PROBE_SIZE = 512  # training samples in the probe batch (the first ones: fixed across epochs and runs)
SATURATION_MARGIN = 0.02
HISTOGRAM_BINS = 40

# Warning thresholds (see warnings_for)
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
DEAD_WARNING = 0.5
SATURATED_WARNING = 0.5
SYMMETRIC_WARNING = 0.99


@dataclass(frozen=True)
class Diagnostics:
    grad_norm: tuple[float, ...]  # per Linear layer, input to output
    weight_norm: tuple[float, ...]
    activation_mean: tuple[float, ...]  # per hidden layer
    activation_std: tuple[float, ...]
    saturated_fraction: tuple[float, ...]
    dead_fraction: tuple[float, ...]
    symmetric_fraction: tuple[float, ...]
    histograms: tuple[dict[str, Any], ...]  # per hidden layer: {"edges": [lo, hi], "counts": [...]}
    train_grad_norm: tuple[float, ...] = ()  # per Linear layer: mean over the epoch's training steps

    @property
    def gradient_ratio(self) -> float | None:
        """First layer's gradient norm over the last layer's: << 1 vanishing, >> 1 exploding."""
        if len(self.grad_norm) < 2 or self.grad_norm[-1] == 0:
            return None
        return self.grad_norm[0] / self.grad_norm[-1]

    def columns(self) -> dict[str, float]:
        """Flat, named per-layer columns for metrics.csv (layer numbers start at 1)."""
        out: dict[str, float] = {}
        for prefix, values in [("grad_norm", self.grad_norm), ("train_grad_norm", self.train_grad_norm),
                               ("weight_norm", self.weight_norm),
                               ("act_mean_h", self.activation_mean), ("act_std_h", self.activation_std),
                               ("saturated_h", self.saturated_fraction), ("dead_h", self.dead_fraction),
                               ("symmetric_h", self.symmetric_fraction)]:
            separator = "" if prefix.endswith("_h") else "_"
            out.update({f"{prefix}{separator}{i}": v for i, v in enumerate(values, start=1)})
        return out

    def summary(self) -> dict[str, Any]:
        return {"grad_norm": list(self.grad_norm), "gradient_ratio_first_last": self.gradient_ratio,
                "train_grad_norm": list(self.train_grad_norm),
                "weight_norm": list(self.weight_norm), "activation_mean": list(self.activation_mean),
                "activation_std": list(self.activation_std), "saturated_fraction": list(self.saturated_fraction),
                "dead_fraction": list(self.dead_fraction), "symmetric_fraction": list(self.symmetric_fraction),
                "activation_histograms": list(self.histograms)}


def probe(model: nn.Module, loss_fn: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
          activation: str) -> Diagnostics:
    """Measure the model on the probe batch; one host sync at the end."""
    linears = linear_layers(model)
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
             for m in model.modules() if _is_activation(m)]
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
        numbers = [torch.stack([g.norm() for g in grads]), torch.stack([l.weight.norm() for l in linears])]
        per_layer = [_layer_stats(out, layer, bounds) for out, layer in zip(outputs, linears)]
        ranges = [_range(out, bounds) for out in outputs]
        histograms = [torch.histc((out - low) / (high - low).clamp_min(1e-12), HISTOGRAM_BINS, 0.0, 1.0)
                      for out, (low, high) in zip(outputs, ranges)]
        edges = [torch.stack([low, high]) for low, high in ranges]
        flat = torch.cat([*numbers, *(torch.stack(s) for s in per_layer), *histograms, *edges]).tolist()
    k, h = len(linears), len(outputs)
    grad_norm, weight_norm, rest = flat[:k], flat[k:2 * k], flat[2 * k:]
    stats = [rest[i * 5:(i + 1) * 5] for i in range(h)]
    rest = rest[5 * h:]
    counts = [rest[i * HISTOGRAM_BINS:(i + 1) * HISTOGRAM_BINS] for i in range(h)]
    ranges = rest[HISTOGRAM_BINS * h:]
    return Diagnostics(
        tuple(grad_norm), tuple(weight_norm),
        *(tuple(s[j] for s in stats) for j in range(5)),
        tuple({"edges": ranges[2 * i:2 * i + 2], "counts": [int(c) for c in counts[i]]} for i in range(h)),
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


def warnings_for(diagnostics: Diagnostics) -> list[tuple[str, str]]:
    """(key, one-line warning) for every threshold crossed; the key lets callers warn once per run."""
    found = []
    ratio = diagnostics.gradient_ratio
    last = len(diagnostics.grad_norm)
    if ratio is not None and ratio < VANISHING_RATIO:
        found.append(("vanishing", f"layer 1 gradients are {ratio:.1e} of layer {last}'s: vanishing gradients"))
    if ratio is not None and ratio > EXPLODING_RATIO:
        found.append(("exploding", f"layer 1 gradients are {ratio:.1e} times layer {last}'s: exploding gradients"))
    for layer, (dead, saturated, symmetric) in enumerate(zip(
            diagnostics.dead_fraction, diagnostics.saturated_fraction, diagnostics.symmetric_fraction), start=1):
        if symmetric >= SYMMETRIC_WARNING:
            found.append((f"symmetric{layer}", f"all units of layer {layer} are identical: symmetric weights "
                                               f"(e.g. zero init) never break symmetry"))
        if dead >= DEAD_WARNING:
            found.append((f"dead{layer}", f"{dead:.0%} of layer-{layer} units are dead (zero for every probe sample)"))
        if saturated >= SATURATED_WARNING:
            found.append((f"saturated{layer}", f"{saturated:.0%} of layer-{layer} outputs are saturated "
                                               f"(within {SATURATION_MARGIN} of the activation's limits)"))
    return found


class WarningTracker:
    """Reports each warning (by key) once per run, the first epoch its threshold is crossed."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def new(self, diagnostics: Diagnostics | None) -> list[str]:
        fresh = [(key, text) for key, text in (warnings_for(diagnostics) if diagnostics else []) if key not in self.seen]
        self.seen.update(fresh)
        return [text for _, text in fresh]

    @property
    def all(self) -> list[str]:
        return list(self.seen.values())
