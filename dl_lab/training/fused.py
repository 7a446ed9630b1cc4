"""A training step's forward and backward pass written out by hand, for MLPs of Linear layers,
elementwise activations, dropout and batch norm: every preset of the lab.

Autograd records a graph node per operation on every step and walks it back; for a model this small
that bookkeeping costs about as much as the arithmetic on a CPU. Here the forward pass keeps exactly
what its backward pass needs, and the backward pass calls the ATen kernels autograd's formulas call
(mm/bmm in the same operand order, threshold_backward, sigmoid_backward, nll_loss_backward,
_log_softmax_backward_data, ...), so each gradient is bitwise the one ``loss.backward()`` would leave
in ``.grad`` (tests/test_fused.py checks this for every activation, dropout and the stacked layout).
The one exception is asked for: with train.bf16_matmul on a CPU that multiplies bf16 natively but
whose "medium" precision keeps float32 products, the Linear layers' matmuls take bf16 operands
(Bf16LinearOp, Bf16StackedLinearOp).

Used for training steps on the CPU only: on CUDA the step is launch-bound and keeps autograd (and CUDA
graphs) until measured on a GPU. A model with a layer not handled here (an activation ``elementwise``
does not know, a batch norm configured otherwise than build_mlp does) keeps autograd as well;
evaluation never uses this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from dl_lab.components.sampling import bernoulli_draws

aten = torch.ops.aten
MEAN, NONE = 1, 0  # ATen's reduction enum for nll_loss
IGNORE_INDEX = -100  # F.cross_entropy's default

# torch.selu is elu with these constants (ATen's SELU_ALPHA and SELU_SCALE)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class Op(Protocol):
    """One layer of the hand-written pass: forward returns its output and what backward needs."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def backward(self, grad: torch.Tensor, saved: Any) -> torch.Tensor | None: ...


class LinearOp:
    """nn.Linear, weight (out, in): forward addmm(b, h, W.t()), as F.linear; the gradients as AddmmBackward
    computes them for a transposed (column-major) weight. The first layer computes no input gradient."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, first: bool) -> None:
        self.weight, self.bias, self.first = weight, bias, first

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.addmm(self.bias, h, self.weight.t()), h

    def backward(self, grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
        self.weight.grad = grad.t().mm(saved)
        self.bias.grad = grad.sum(0)
        return None if self.first else grad.mm(self.weight)


class Bf16LinearOp(LinearOp):
    """LinearOp with its matmuls on bf16 operands (train.bf16_matmul where the CPU multiplies bf16 natively
    but torch's "medium" precision keeps float32 products: device.matmul_operands_bf16). The input, the weight
    (once a step, kept for the input gradient) and the output gradient are rounded to bf16; each matmul
    accumulates in float32 and returns bf16, which is widened back: weights, gradients, biases and
    optimizer state stay float32, as under torch.autocast."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        low = h.to(torch.bfloat16), self.weight.to(torch.bfloat16)
        return torch.mm(low[0], low[1].t()).to(h.dtype).add_(self.bias), low

    def backward(self, grad: torch.Tensor, saved: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        h, weight = saved
        low = grad.to(torch.bfloat16)
        self.weight.grad = low.t().mm(h).to(grad.dtype)
        self.bias.grad = grad.sum(0)
        return None if self.first else low.mm(weight).to(grad.dtype)


class StackedLinearOp:
    """M Linear layers, weights (M, in, out) and biases (M, out): baddbmm and BaddbmmBackward's formulas."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, first: bool) -> None:
        self.weight, self.bias, self.first = weight, bias, first

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight), h

    def backward(self, grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
        self.weight.grad = saved.transpose(1, 2).bmm(grad)
        self.bias.grad = grad.sum(1)
        return None if self.first else grad.bmm(self.weight.transpose(1, 2))


class Bf16StackedLinearOp(StackedLinearOp):
    """StackedLinearOp on bf16 operands, as Bf16LinearOp."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        low = h.to(torch.bfloat16), self.weight.to(torch.bfloat16)
        return torch.bmm(*low).to(h.dtype).add_(self.bias.unsqueeze(1)), low

    def backward(self, grad: torch.Tensor, saved: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        h, weight = saved
        low = grad.to(torch.bfloat16)
        self.weight.grad = h.transpose(1, 2).bmm(low).to(grad.dtype)
        self.bias.grad = grad.sum(1)
        return None if self.first else low.bmm(weight.transpose(1, 2)).to(grad.dtype)


class ElementwiseOp:
    """An activation: its function, and its derivative from the saved input or output."""

    def __init__(
        self,
        function: Callable[[torch.Tensor], torch.Tensor],
        derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        saves_output: bool,
        in_place: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], None]]
        | None = None,
    ) -> None:
        self.function, self.derivative, self.saves_output = function, derivative, saves_output
        # function and derivative as the same kernels writing over their input (where the output is saved)
        self.in_place = in_place

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.function(h)
        return out, out if self.saves_output else h

    def backward(self, grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
        return self.derivative(grad, saved)


def elementwise(module: nn.Module) -> ElementwiseOp | None:
    """The activation module's pass, as autograd's formula for it (derivatives.yaml) computes it."""
    if isinstance(module, nn.ReLU):
        relu_in_place = (torch.relu_, lambda g, out: aten.threshold_backward.grad_input(g, out, 0, grad_input=g))
        return ElementwiseOp(torch.relu, lambda g, out: aten.threshold_backward(g, out, 0), True, relu_in_place)
    if isinstance(module, nn.Sigmoid):
        sigmoid_in_place = (torch.sigmoid_, lambda g, out: aten.sigmoid_backward.grad_input(g, out, grad_input=g))
        return ElementwiseOp(torch.sigmoid, aten.sigmoid_backward, True, sigmoid_in_place)
    if isinstance(module, nn.Tanh):
        tanh_in_place = (torch.tanh_, lambda g, out: aten.tanh_backward.grad_input(g, out, grad_input=g))
        return ElementwiseOp(torch.tanh, aten.tanh_backward, True, tanh_in_place)
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return ElementwiseOp(
            lambda h: F.leaky_relu(h, slope), lambda g, h: aten.leaky_relu_backward(g, h, slope, False), False
        )
    if isinstance(module, nn.ELU):
        alpha = module.alpha
        return ElementwiseOp(lambda h: F.elu(h, alpha), lambda g, h: aten.elu_backward(g, alpha, 1, 1, False, h), False)
    if isinstance(module, nn.SELU):
        return ElementwiseOp(torch.selu, lambda g, h: aten.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1, False, h), False)
    if isinstance(module, nn.GELU):
        mode = module.approximate
        return ElementwiseOp(
            lambda h: F.gelu(h, approximate=mode), lambda g, h: aten.gelu_backward(g, h, approximate=mode), False
        )
    if isinstance(module, nn.Softplus):
        beta, threshold = module.beta, module.threshold
        return ElementwiseOp(
            lambda h: F.softplus(h, beta, threshold),
            lambda g, h: aten.softplus_backward(g, h, beta, threshold),
            False,
        )
    return None


class SegmentedOp:
    """Different activations over slices of a stack's models (dim 0): each op on its slice, joined again.
    The same elementwise kernels on the same values, so each model's result is what its own op gives.
    Where every op saves its output (relu, sigmoid, tanh) they write over their input instead: the
    fresh output of the layer before (backward: the gradient from the layer after), which nothing
    else keeps."""

    def __init__(self, parts: Sequence[tuple[int, int, ElementwiseOp]]) -> None:
        self.parts = parts
        in_place = [(start, stop, op.in_place) for start, stop, op in parts if op.in_place is not None]
        self.in_place = in_place if len(in_place) == len(parts) else None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        if self.in_place is not None:
            return h, [function(h[start:stop]) for start, stop, (function, _) in self.in_place]
        outs, saved = zip(*(op.forward(h[start:stop]) for start, stop, op in self.parts))
        return torch.cat(outs), list(saved)

    def backward(self, grad: torch.Tensor, saved: list[Any]) -> torch.Tensor | None:
        # In place only over a contiguous gradient: the next layer's reductions (a bias gradient's sum)
        # must see autograd's layout, which is cat's, to round alike (a batch norm's gradient is not).
        if self.in_place is not None and grad.is_contiguous():
            for (start, stop, (_, derivative)), out in zip(self.in_place, saved):
                derivative(grad[start:stop], out)
            return grad
        return torch.cat([op.backward(grad[a:b], kept) for (a, b, op), kept in zip(self.parts, saved)])


def segmented(parts: Sequence[tuple[int, int, nn.Module]]) -> ElementwiseOp | SegmentedOp | None:
    """The pass for a stack's activation modules, given as (start, stop, module) slices of its models;
    None where one of them has no hand-written pass."""
    ops = []
    for start, stop, module in parts:
        op = elementwise(module)
        if op is None:
            return None
        ops.append((start, stop, op))
    return ops[0][2] if len(ops) == 1 else SegmentedOp(ops)


class MaskOp:
    """Dropout as a multiplication by a scaled Bernoulli mask; ``draw`` makes the mask for an input."""

    def __init__(self, draw: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.draw = draw

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.draw(h)
        return h * mask, mask

    def backward(self, grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
        return grad * saved


def dropout_mask(p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """nn.Dropout's CPU mask (ATen's _dropout_impl): Bernoulli(1 - p) from the global generator, / (1 - p)."""

    def draw(h: torch.Tensor) -> torch.Tensor:
        return bernoulli_draws(h.shape, 1 - p, None, h.device).div_(1 - p)

    return draw


class BatchNormOp:
    """Batch norm in training mode as nn.BatchNorm1d's forward calls it (F.batch_norm -> native_batch_norm,
    which updates the running statistics in place) and as NativeBatchNormBackward0 differentiates it.

    One model: (B, F) in and out, and num_batches_tracked counted as the module counts it. A stack
    (stack.py's StackedBatchNorm, parameters and statistics (M, F), counters (M,)): (M, B, F) in and
    out, normalized as (B, M * F) columns through flat views, exactly as its own forward does."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running: tuple[torch.Tensor, torch.Tensor],
        momentum: float,
        eps: float,
        counter: torch.Tensor | None = None,
    ) -> None:
        self.weight, self.bias, self.running, self.momentum, self.eps = weight, bias, running, momentum, eps
        self.counter, self.stacked = counter, weight.dim() == 2

    @classmethod
    def of(cls, module: nn.Module) -> BatchNormOp | None:
        """For an nn.BatchNorm1d as build_mlp makes it (affine, running statistics, a fixed momentum)."""
        if not (isinstance(module, nn.BatchNorm1d) and module.affine and module.track_running_stats):
            return None
        if module.momentum is None or module.num_batches_tracked is None:
            return None
        running = (module.running_mean, module.running_var)
        return cls(module.weight, module.bias, running, module.momentum, module.eps, module.num_batches_tracked)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.counter is not None:
            self.counter.add_(1)
        flat = columns(h) if self.stacked else h
        out, mean, invstd = aten.native_batch_norm(
            flat, self.weight.view(-1), self.bias.view(-1), *self._running(), True, self.momentum, self.eps
        )
        return (uncolumns(out, h.shape) if self.stacked else out), (flat, mean, invstd)

    def backward(self, grad: torch.Tensor, saved: Any) -> torch.Tensor | None:
        flat, mean, invstd = saved
        grad_input, grad_weight, grad_bias = aten.native_batch_norm_backward(
            columns(grad) if self.stacked else grad,
            flat,
            self.weight.view(-1),
            *self._running(),
            mean,
            invstd,
            True,
            self.eps,
            [True, True, True],
        )
        self.weight.grad, self.bias.grad = grad_weight.view(self.weight.shape), grad_bias.view(self.bias.shape)
        return uncolumns(grad_input, grad.shape) if self.stacked else grad_input

    def _running(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.running[0].view(-1), self.running[1].view(-1)


def columns(h: torch.Tensor) -> torch.Tensor:
    """(M, B, F) -> (B, M * F): each model's features side by side, one sample per row. One batch norm
    over these columns is M per-model batch norms."""
    count, batch, features = h.shape
    return h.transpose(0, 1).reshape(batch, count * features)


def uncolumns(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """columns() undone: (B, M * F) -> (M, B, F), as a view."""
    count, batch, features = shape
    return flat.view(batch, count, features).transpose(0, 1)


# (inputs, targets) -> (loss, detached logits), with every parameter's .grad set
Pass = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def run_pass(ops: Sequence[Op], inputs: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    """Forward through ``ops``: the logits and what each op saved."""
    saved = []
    h = inputs
    for op in ops:
        h, kept = op.forward(h)
        saved.append(kept)
    return h, saved


def run_backward(ops: Sequence[Op], saved: list[Any], grad: torch.Tensor) -> None:
    """Backward through ``ops`` from the gradient of the logits; the first Linear stops it."""
    for op, kept in zip(reversed(ops), reversed(saved)):
        out = op.backward(grad, kept)
        if out is None:
            return
        grad = out


def used_on(device: torch.device) -> bool:
    """Where training steps take the hand-written pass: the CPU (CUDA is not measured yet)."""
    return device.type == "cpu"


def single_pass(model: nn.Sequential, device: torch.device, bf16: bool = False) -> Pass | None:
    """The hand-written pass for one nn.Sequential with mean cross-entropy, or None where it keeps autograd;
    ``bf16``: its matmuls on bf16 operands (Bf16LinearOp)."""
    if not used_on(device):
        return None
    ops: list[Op] = []
    linear = Bf16LinearOp if bf16 else LinearOp
    for layer in model:
        if isinstance(layer, nn.Linear):
            ops.append(linear(layer.weight, layer.bias, first=not ops))
        elif isinstance(layer, nn.Dropout):
            ops.append(MaskOp(dropout_mask(layer.p)))
        elif (op := BatchNormOp.of(layer) or elementwise(layer)) is not None:
            ops.append(op)
        else:
            return None

    @torch.no_grad()
    def forward_backward(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, saved = run_pass(ops, inputs)
        logp = torch.log_softmax(logits, 1)
        loss, total_weight = aten.nll_loss_forward(logp, targets, None, MEAN, IGNORE_INDEX)
        grad = aten.nll_loss_backward(torch.ones_like(loss), logp, targets, None, MEAN, IGNORE_INDEX, total_weight)
        run_backward(ops, saved, aten._log_softmax_backward_data(grad, logp, 1, logp.dtype))
        return loss, logits

    return forward_backward


def stacked_pass(ops: Sequence[Op]) -> Pass:
    """The hand-written pass for a stack: inputs (M, B, features), targets (M, B); each model's loss is
    its mean cross-entropy, the (M,) losses are summed for the backward pass (models share nothing)."""

    @torch.no_grad()
    def forward_backward(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, saved = run_pass(ops, inputs)
        count, batch, classes = logits.shape
        flat = targets.reshape(-1)
        logp = torch.log_softmax(logits.reshape(count * batch, classes), 1)
        per_sample, total_weight = aten.nll_loss_forward(logp, flat, None, NONE, IGNORE_INDEX)
        per_model = per_sample.view(count, batch).mean(1)
        # sum() then mean(1) backward: ones spread over each model's batch, divided by the batch size
        grad = torch.ones_like(per_model).unsqueeze(1).expand(count, batch).div(batch).reshape(-1)
        grad = aten.nll_loss_backward(grad, logp, flat, None, NONE, IGNORE_INDEX, total_weight)
        grad = aten._log_softmax_backward_data(grad, logp, 1, logp.dtype)
        run_backward(ops, saved, grad.view(count, batch, classes))
        return per_model, logits

    return forward_backward
