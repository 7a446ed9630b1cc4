"""Train several models of one architecture at once: stacked weights and batched matmuls (bmm).

A comparison is many tiny models (seeds of a variant, variants differing only in init or dropout p).
One such model leaves the hardware idle between small kernels; stacking M of them turns every
Linear layer into one batched matmul over (M, batch, features), so M models cost about one launch
sequence. Each model keeps its own init (built exactly as the sequential engine builds it), data
order (its own seeded permutation), dropout masks (its own generator, continuing the RNG stream the
sequential engine would use), batch-norm statistics and optimizer state (optimizers are elementwise,
so one optimizer over stacked tensors is M independent ones). On CPU the metrics match sequential
training within float rounding (tests/test_batched.py).

Runs are batched when everything but name, seed, activation, init, init_gain and the dropout
probability agrees (stackable.py); other runs go through the sequential engine unchanged. Models with
different activations share the stack's matmuls, each activation applied to its slice of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dl_lab.components.datasets import Dataset, Split
from dl_lab.components.optimizers import OPTIMIZERS
from dl_lab.components.plain_optim import plain_step
from dl_lab.components.sampling import bernoulli_draws
from dl_lab.config.schema import ExperimentConfig
from dl_lab.training.cuda_graphs import StepBody, StepOut
from dl_lab.training.device import matmul_operands_bf16
from dl_lab.training.diagnostics import summarize
from dl_lab.training.engine import Member, train, train_unit
from dl_lab.training.events import Observer
from dl_lab.training.fused import (
    BatchNormOp,
    Bf16StackedLinearOp,
    MaskOp,
    Op,
    StackedLinearOp,
    columns,
    segmented,
    stacked_pass,
    uncolumns,
    used_on,
)
from dl_lab.training.results import Diagnostics, TrainResult
from dl_lab.training.stackable import DEFAULT_GROUPING, plan_batches


class BatchedEngine:
    """Batches what it can (see plan_batches), trains the rest one by one."""

    def __init__(self, min_batch: int = 2, by: str = DEFAULT_GROUPING) -> None:
        self.min_batch, self.by = min_batch, by  # by: stackable.GROUPINGS

    def run(
        self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device, observer: Observer
    ) -> list[TrainResult]:
        results: dict[int, TrainResult] = {}
        for group in plan_batches(configs, self.min_batch, self.by):
            if len(group) == 1 and self.min_batch > 1:
                results[group[0]] = train(configs[group[0]], data, device, observer)
            else:
                for index, result in zip(group, train_batched([configs[i] for i in group], data, device, observer)):
                    results[index] = result
            if any(r.status == "interrupted" for r in results.values()):
                break
        return [results[i] for i in sorted(results)]


def train_batched(
    configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device, observer: Observer
) -> list[TrainResult]:
    """Train len(configs) models of one architecture together; one TrainResult per config."""
    return train_unit(configs, data, device, observer, StackNet)


class StackedLinear:
    """M Linear layers: weights (M, in, out), i.e. transposed, so bmm(h, W) needs no transpose (measured
    ~20% faster on CPU); biases (M, out)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        self.weight = _leaf([layer.weight.T for layer in layers])
        self.bias = _leaf([layer.bias for layer in layers])

    def forward(self, h: torch.Tensor, training: bool, streams: Sequence[torch.Generator]) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight)

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    def buffers(self) -> list[torch.Tensor]:
        return []

    def copy_into(self, layer: nn.Module, index: int) -> None:
        layer.weight.copy_(self.weight[index].T)
        layer.bias.copy_(self.bias[index])


class StackedBatchNorm:
    """M BatchNorm1d layers, each over its own model's batch (dim 1); parameters and running stats (M, F).

    One batch norm over (B, M * F) columns is M per-model ones: each column is one model's feature,
    normalized over that model's B samples. So the stack calls the kernel a lone model's BatchNorm1d
    calls (native_batch_norm, which also updates the running statistics, through (M * F,) views)."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d]) -> None:
        self.weight = _leaf([layer.weight for layer in layers])
        self.bias = _leaf([layer.bias for layer in layers])
        self.running_mean = torch.stack([layer.running_mean for layer in layers])
        self.running_var = torch.stack([layer.running_var for layer in layers])
        # (M,): training batches seen, counted as each BatchNorm1d counts its own (its state_dict has it)
        self.num_batches_tracked = torch.stack([layer.num_batches_tracked for layer in layers])
        self.eps, self.momentum = layers[0].eps, layers[0].momentum

    def forward(self, h: torch.Tensor, training: bool, streams: Sequence[torch.Generator]) -> torch.Tensor:
        if training:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            columns(h),
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            training=training,
            momentum=self.momentum,
            eps=self.eps,
        )
        return uncolumns(out, h.shape)

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    def buffers(self) -> list[torch.Tensor]:
        return [self.running_mean, self.running_var, self.num_batches_tracked]

    def copy_into(self, layer: nn.Module, index: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            getattr(layer, name).copy_(getattr(self, name)[index])


class _Stateless:
    """A stacked layer without parameters or buffers of its own."""

    def parameters(self) -> list[torch.Tensor]:
        return []

    def buffers(self) -> list[torch.Tensor]:
        return []

    def copy_into(self, layer: nn.Module, index: int) -> None:
        pass


class StackedDropout(_Stateless):
    """Per-model dropout: each model draws its masks from its own stream, as its nn.Dropout would."""

    def __init__(self, probabilities: Sequence[float], device: torch.device) -> None:
        # keep = 1 - p in double, as nn.Dropout computes it, so the Bernoulli draws match exactly
        self.keep = [1 - p for p in probabilities]
        self.scale = torch.tensor(self.keep, device=device)[:, None, None]

    def forward(self, h: torch.Tensor, training: bool, streams: Sequence[torch.Generator]) -> torch.Tensor:
        return h * self.mask(h, streams) if training else h

    def mask(self, h: torch.Tensor, streams: Sequence[torch.Generator]) -> torch.Tensor:
        """Each model's scaled Bernoulli(1 - p) mask for ``h`` (M, B, features), from its own stream."""
        noise = torch.stack(
            [bernoulli_draws(h.shape[1:], keep, stream, h.device) for keep, stream in zip(self.keep, streams)]
        )
        return noise.div_(self.scale)


class StackedActivation(_Stateless):
    """The models' activations. They apply elementwise, so one module serves every model that has it: the
    models are ordered so that each activation's models are one slice (plan_batches), and a stack of one
    activation calls its module once, on the whole stack."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.segments = segments(modules)

    def forward(self, h: torch.Tensor, training: bool, streams: Sequence[torch.Generator]) -> torch.Tensor:
        if len(self.segments) == 1:
            return self.segments[0][2](h)
        return torch.cat([module(h[start:stop]) for start, stop, module in self.segments])


def segments(modules: Sequence[nn.Module]) -> list[tuple[int, int, nn.Module]]:
    """Runs of equal modules (same class and settings): (start, stop, one of them)."""
    out: list[tuple[int, int, nn.Module]] = []
    for index, module in enumerate(modules):
        if out and repr(out[-1][2]) == repr(module):
            out[-1] = (out[-1][0], index + 1, out[-1][2])
        else:
            out.append((index, index + 1, module))
    return out


StackedLayer = StackedLinear | StackedBatchNorm | StackedDropout | StackedActivation


def _leaf(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).requires_grad_()


class Stack:
    """M models of one architecture as one model: one stacked layer per layer of the nn.Sequential."""

    def __init__(self, models: Sequence[nn.Sequential], dropout: Sequence[float], device: torch.device) -> None:
        self.layers: list[StackedLayer] = []
        for position, layer in enumerate(models[0]):
            same = [model[position] for model in models]
            if isinstance(layer, nn.Linear):
                self.layers.append(StackedLinear(same))
            elif isinstance(layer, nn.BatchNorm1d):
                self.layers.append(StackedBatchNorm(same))
            elif isinstance(layer, nn.Dropout):
                self.layers.append(StackedDropout(dropout, device))
            else:
                self.layers.append(StackedActivation(same))
        self.weights = [layer.weight for layer in self.layers if isinstance(layer, StackedLinear)]
        self.has_dropout = any(isinstance(layer, StackedDropout) for layer in self.layers)

    def forward(self, x: torch.Tensor, training: bool, streams: Sequence[torch.Generator]) -> torch.Tensor:
        """x: (M, B, features) -> logits (M, B, classes)."""
        for layer in self.layers:
            x = layer.forward(x, training, streams)
        return x

    def parameters(self) -> list[torch.Tensor]:
        """In the order the sequential model lists them (layer by layer, weight then bias)."""
        return [tensor for layer in self.layers for tensor in layer.parameters()]

    def buffers(self) -> list[torch.Tensor]:
        return [tensor for layer in self.layers for tensor in layer.buffers()]

    def copy_into(self, models: Sequence[nn.Sequential]) -> None:
        """Copy the stacked state back into the per-model modules (for run_finished observers)."""
        with torch.no_grad():
            for index, model in enumerate(models):
                for layer, stacked in zip(model, self.layers, strict=True):
                    stacked.copy_into(layer, index)


def fused_ops(stack: Stack, streams: Sequence[torch.Generator], bf16: bool = False) -> list[Op] | None:
    """The stack's layers as the hand-written pass's ops (fused.py), or None where it keeps autograd;
    ``bf16``: matmuls on bf16 operands (Bf16StackedLinearOp)."""
    ops: list[Op] = []
    linear = Bf16StackedLinearOp if bf16 else StackedLinearOp
    for layer in stack.layers:
        if isinstance(layer, StackedLinear):
            ops.append(linear(layer.weight, layer.bias, first=not ops))
        elif isinstance(layer, StackedDropout):
            ops.append(MaskOp(lambda h, dropout=layer: dropout.mask(h, streams)))
        elif isinstance(layer, StackedBatchNorm):
            running = (layer.running_mean, layer.running_var)
            ops.append(
                BatchNormOp(layer.weight, layer.bias, running, layer.momentum, layer.eps, layer.num_batches_tracked)
            )
        elif isinstance(layer, StackedActivation) and (op := segmented(layer.segments)) is not None:
            ops.append(op)
        else:
            return None
    return ops


class StackNet:
    """M models of one architecture as one stack (the engine's Net for a unit of several runs)."""

    def __init__(self, members: list[Member], device: torch.device, graphed: bool) -> None:
        self.members, self.count = members, len(members)
        self.stack = Stack([m.model for m in members], [m.config.model.dropout for m in members], device)
        config = members[0].config
        self.optimizer = OPTIMIZERS[config.optimizer.name].build(
            self.stack.parameters(), config.optimizer, device, graphed, config.train.compile
        )
        self.bf16 = matmul_operands_bf16(config.train.bf16_matmul, device)  # part of the batch key: all agree

    def step(self, split: Split, track_grads: bool) -> StepBody:
        """One optimization step of every model; ``index`` holds model 0's batch, then model 1's, ...
        Returns the (M,) losses and correct counts, and with ``track_grads`` the (M, K) gradient norms
        of the Linear weights."""
        stack, optimizer_step, count = self.stack, plain_step(self.optimizer), self.count
        streams = [m.dropout_stream for m in self.members]  # drawn from only when the models have dropout

        def autograd_pass(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = stack.forward(inputs, True, streams)
            batch = targets.shape[1]
            per_model = (
                F.cross_entropy(logits.reshape(count * batch, -1), targets.reshape(-1), reduction="none")
                .view(count, batch)
                .mean(1)
            )
            per_model.sum().backward()  # the models share no parameters: each gets its own gradient
            return per_model.detach(), logits.detach()

        ops = fused_ops(stack, streams, self.bf16) if used_on(split.x.device) else None
        forward_backward = autograd_pass if ops is None else stacked_pass(ops)

        def body(index: torch.Tensor) -> StepOut:
            batch = index.numel() // count
            inputs = split.x.index_select(0, index).view(count, batch, -1)
            targets = split.y.index_select(0, index).view(count, batch)
            per_model, logits = forward_backward(inputs, targets)
            grad_norm = (
                torch.stack([w.grad.flatten(1).norm(dim=1) for w in stack.weights], dim=1) if track_grads else None
            )
            optimizer_step()
            return StepOut(per_model, (logits.argmax(2) == targets).sum(1), grad_norm)

        return body

    def eval_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, n = self.count, len(targets)
        logits = self.stack.forward(inputs.expand(count, -1, -1), False, [])
        loss = (
            F.cross_entropy(logits.reshape(count * n, -1), targets.repeat(count), reduction="none")
            .view(count, n)
            .sum(1)
        )
        return loss, (logits.argmax(2) == targets).sum(1)

    def set_training(self, mode: bool) -> None:
        """The stacked forward takes the mode per call: training steps train, evaluation evaluates."""

    def diagnose(
        self, inputs: torch.Tensor, targets: torch.Tensor, activations: Sequence[str], which: Sequence[int]
    ) -> list[Diagnostics]:
        """Every model's probe in one pass over the stack (eval mode, autograd.grad: no dropout masks drawn,
        no batch-norm statistics or .grad touched), one sort per hidden layer for all models (a host sync
        each on a GPU) and one transfer, instead of all of that per model; the numbers are each model's
        own probe's up to float rounding (batched matmuls)."""
        stack, count = self.stack, self.count
        outputs = []
        with torch.enable_grad():
            h = inputs.expand(count, -1, -1)
            for layer in stack.layers:
                h = layer.forward(h, False, [])
                if isinstance(layer, StackedActivation):
                    outputs.append(h.detach())
            losses = F.cross_entropy(h.reshape(-1, h.shape[-1]), targets.repeat(count), reduction="none")
            grads = torch.autograd.grad(losses.view(count, -1).mean(1).sum(), stack.weights)
        linears = [layer for layer in stack.layers if isinstance(layer, StackedLinear)]
        return summarize(
            grads,
            [(layer.weight.detach().transpose(1, 2), layer.bias.detach()) for layer in linears],
            outputs,
            activations,
            which,
        )

    def graph_state(self) -> list[torch.Tensor]:
        return [*self.stack.parameters(), *self.stack.buffers()]

    def random_streams(self) -> list[torch.Generator]:
        """Each model's dropout stream, when the models have dropout (CUDA graphs register them)."""
        return [m.dropout_stream for m in self.members] if self.stack.has_dropout else []

    def models(self) -> list[nn.Sequential]:
        models = [m.model for m in self.members]
        self.stack.copy_into(models)
        return models
