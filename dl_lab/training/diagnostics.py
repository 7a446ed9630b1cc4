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
``summarize`` computes the numbers of M models at once from tensors with a leading model dimension: a
lone model's probe passes M = 1 (its numbers bit for bit those of the per-model code this replaced), a
stack (StackNet.diagnose) all its models from one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    [diagnostics] = summarize(
        [g[None] for g in grads],
        [(linear.weight[None], linear.bias[None]) for linear in linears],
        [out[None] for out in outputs],
        [activation],
    )
    return diagnostics


def summarize(
    grads: Sequence[torch.Tensor],
    linears: Sequence[tuple[torch.Tensor, torch.Tensor]],
    outputs: Sequence[torch.Tensor],
    activations: Sequence[str],
    which: Sequence[int] | None = None,
) -> list[Diagnostics]:
    """The diagnostics of M models measured together and read back in one transfer (on a GPU each hidden
    layer's torch.unique waits for the device as well): per Linear layer its weight's
    gradient on the probe batch (M, ...) and its (weight (M, out, in), bias (M, out)); per hidden layer
    the activation outputs (M, samples, features); each model's activation. ``which``: the models to
    report (default all), in that order; the others are left out before anything is computed."""
    if which is not None and list(which) != list(range(len(activations))):
        # only the reported models go on: a diverged one's nan rows would break torch.unique's sort
        pick = torch.tensor(list(which), dtype=torch.long, device=grads[0].device)
        grads = [g.index_select(0, pick) for g in grads]
        linears = [(weight.index_select(0, pick), bias.index_select(0, pick)) for weight, bias in linears]
        outputs = [out.index_select(0, pick) for out in outputs]
        activations = [activations[m] for m in which]
    with torch.no_grad():
        numbers = [torch.stack([_norms(g) for g in grads]), torch.stack([_norms(weight) for weight, _ in linears])]
        bounds = [ACTIVATIONS[name].meta.get("bounds") for name in activations]
        per_layer = [_layer_stats(out, weight, bias, bounds) for out, (weight, bias) in zip(outputs, linears)]
        ranges = [_ranges(out, bounds) for out in outputs]
        histograms = [
            torch.stack(
                [
                    torch.histc((out[m] - low[m]) / (high[m] - low[m]).clamp_min(1e-12), HISTOGRAM_BINS, 0.0, 1.0)
                    for m in range(len(activations))
                ]
            ).T  # (bins, M)
            for out, (low, high) in zip(outputs, ranges)
        ]
        edges = [torch.stack([low, high]) for low, high in ranges]  # (2, M)
        # (rows, M): every number of every model, read in one transfer
        table = torch.cat([*numbers, *per_layer, *edges]).to(torch.float64)
        flat = torch.cat([table, *(h.to(torch.float64) for h in histograms)]).T.tolist()
    k, h = len(linears), len(outputs)
    return [_diagnostics(row, k, h) for row in flat]


def _diagnostics(row: list[float], k: int, h: int) -> Diagnostics:
    """One model's column of summarize's table."""
    grad_norm, weight_norm, rest = row[:k], row[k : 2 * k], row[2 * k :]
    stats = [rest[i * 5 : (i + 1) * 5] for i in range(h)]
    ranges, rest = rest[5 * h : 7 * h], rest[7 * h :]
    counts = [rest[i * HISTOGRAM_BINS : (i + 1) * HISTOGRAM_BINS] for i in range(h)]
    return Diagnostics(
        tuple(grad_norm),
        tuple(weight_norm),
        *(tuple(s[j] for s in stats) for j in range(5)),
        tuple({"edges": ranges[2 * i : 2 * i + 2], "counts": [int(c) for c in counts[i]]} for i in range(h)),
    )


def _norms(tensors: torch.Tensor) -> torch.Tensor:
    """(M,): the 2-norm of each model's tensor, read in any layout (no copy of a transposed view)."""
    return torch.linalg.vector_norm(tensors, dim=tuple(range(1, tensors.dim())))


def _is_activation(module: nn.Module) -> bool:
    return not isinstance(module, (nn.Sequential, nn.Linear, nn.Dropout, nn.modules.batchnorm._BatchNorm))


def _layer_stats(
    out: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bounds: Sequence[tuple[float, float] | None]
) -> torch.Tensor:
    """(5, M): mean, std, saturated fraction, dead fraction, symmetric fraction of one hidden layer of
    each model; ``out`` (M, samples, features), the layer's weight (M, out, in) and bias (M, out)."""
    count = len(out)
    values = out.flatten(1)
    # each model's thresholds, rounded to the outputs' dtype as a Python float compared with them would be;
    # no limits: nothing saturates
    low, high = (
        torch.tensor(limits, dtype=out.dtype, device=out.device)[:, None]
        for limits in zip(
            *((b[0] + SATURATION_MARGIN, b[1] - SATURATION_MARGIN) if b else (-math.inf, math.inf) for b in bounds)
        )
    )
    saturated = ((values < low) | (values > high)).float().mean(1)  # exact: a count over N
    dead = (out == 0).all(dim=1).float().mean(1)
    # rows of [weight | bias], led by the model's index: equal rows within a model, one sort for all models
    index = torch.arange(count, device=out.device, dtype=weight.dtype)[:, None, None].expand(-1, weight.shape[1], 1)
    rows = torch.cat([index, weight, bias[..., None]], dim=2).flatten(0, 1)
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    symmetric = (counts[inverse] > 1).view(count, -1).float().mean(1)
    # one model's mean and std at a time: the same reductions as a lone probe's, and std over a row of
    # a (M, N) tensor is a slow kernel on CPU (3.8 ms against 0.09 ms for N = 131,072)
    moments = [torch.stack([v.mean(), v.std()]) for v in values]
    return torch.cat([torch.stack(moments, dim=1), torch.stack([saturated, dead, symmetric])])


def _ranges(out: torch.Tensor, bounds: Sequence[tuple[float, float] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each model's histogram range as (M,) device tensors (no sync): its activation's limits, else the
    observed range."""
    values = out.flatten(1)
    low, high = values.amin(1), values.amax(1)
    limits = [(m, b) for m, b in enumerate(bounds) if b]
    if limits:
        where = torch.tensor([m for m, _ in limits], device=out.device)
        low = low.index_put((where,), torch.tensor([b[0] for _, b in limits], device=out.device, dtype=out.dtype))
        high = high.index_put((where,), torch.tensor([b[1] for _, b in limits], device=out.device, dtype=out.dtype))
    return low, high
