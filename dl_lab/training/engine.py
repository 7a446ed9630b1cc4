"""Training and evaluation: one epoch loop and one evaluation routine for a single model and for a
stack of models (stack.py). Returns data; writing files and drawing the terminal happen elsewhere.

A unit of work is M runs trained together (M = 1 for a single model). What differs between one
model and a stack is only the ``Net`` — its training step, its evaluation batch and the parameters
it holds; every buffer below has a run axis of size M, and each run keeps its own state in a
``Member``.

Speed rules kept here: the dataset already sits on the device, batches are index slices of it,
loss and accuracy (and, with train.step_grad_norms, each layer's gradient norm) accumulate on the
device, and the host reads them once per epoch (plus a glance at the step buffers every
DIVERGENCE_CHECK_STEPS steps to stop a diverging run). With train.cuda_graphs the step itself is a
replayed CUDA graph (cuda_graphs.py); with train.compile it goes through torch.compile (compiled.py).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from dl_lab.components.datasets import Dataset, Split
from dl_lab.components.model import build_mlp, linear_layers, parameter_count
from dl_lab.components.optimizers import OPTIMIZERS
from dl_lab.components.plain_optim import plain_step, plain_zero_grad
from dl_lab.components.pretraining import PretrainingDiverged, pretrain_rbm
from dl_lab.config.schema import ExperimentConfig
from dl_lab.signals import deferred
from dl_lab.training.compiled import compile_step
from dl_lab.training.cuda_graphs import GraphedSteps, StepBody, StepOut
from dl_lab.training.device import matmul_operands_bf16, stack_precision
from dl_lab.training.diagnostics import PROBE_SIZE, probe
from dl_lab.training.events import Observer
from dl_lab.training.fused import single_pass
from dl_lab.training.memory import EVAL_ROWS
from dl_lab.training.results import (
    BatchPlan,
    Diagnostics,
    EpochMetrics,
    PretrainEpoch,
    Status,
    TrainResult,
)

EVAL_BATCH_SIZE = EVAL_ROWS  # evaluation needs no gradients: chunks far larger than a training batch
DIVERGENCE_CHECK_STEPS = 50  # the host looks for a diverged loss this often (a sync), not every step
# A cross-entropy loss this large means logits of that size: the weights have blown up. Whether float32
# then overflows to inf/nan is luck, so such a loss counts as diverged too.
DIVERGED_LOSS = 1e8


class Diverged(Exception):
    """The training loss became non-finite (nan or inf) or exceeded DIVERGED_LOSS, or a gradient
    became non-finite (seen at its own step with train.step_grad_norms; otherwise in the next step's loss)."""

    def __init__(self, epoch: int, step: int, loss: float, grad_norm: Sequence[float] | None = None) -> None:
        super().__init__(f"{_divergence(loss, grad_norm)} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def _divergence(loss: float, grad_norm: Sequence[float] | None) -> str:
    if not math.isfinite(loss):
        return f"the training loss became {loss}"
    if loss > DIVERGED_LOSS:
        return f"the training loss reached {loss:.3g} (limit {DIVERGED_LOSS:.0e})"
    layer, norm = next(((i, g) for i, g in enumerate(grad_norm or (), start=1) if not math.isfinite(g)), (0, math.nan))
    return f"the gradient norm of layer {layer} became {norm} (loss {loss:.4g})"


def bad_steps(losses: torch.Tensor, grad_norms: torch.Tensor | None) -> torch.Tensor:
    """Per step (and model): did it diverge? ``losses`` (steps, ...), ``grad_norms`` (steps, ..., K)."""
    bad = ~torch.isfinite(losses) | (losses > DIVERGED_LOSS)
    if grad_norms is not None:
        bad |= ~torch.isfinite(grad_norms).all(-1)
    return bad


class AllDiverged(Exception):
    """Every run of the unit diverged: nothing is left to train."""


@dataclass(frozen=True)
class Generators:
    order: torch.Generator  # shuffles the training data each epoch
    pretrain: torch.Generator  # shuffles pre-training batches, apart so data order is the same with or without


def configure_math(config: ExperimentConfig, device: torch.device, stacked: bool = False) -> None:
    """Set per unit (the setting is process-wide): TF32 matmuls on CUDA, bf16 matmuls on CPU, each only
    when the config asks (torch's float32 matmul precision "high" and "medium"), else full float32 —
    for a stack on the CPU through the kernels choose_stack_matmuls picked for this process."""
    if device.type == "cuda":
        precision = "high" if config.train.tf32 else "highest"
    elif config.train.bf16_matmul:
        precision = "medium"
    else:
        precision = stack_precision(config.model.hidden) if stacked else "highest"
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = config.train.tf32 and device.type == "cuda"


def seed_everything(seed: int) -> Generators:
    """Seed init, dropout and RBM sampling (all devices) and return the generators that order the data.

    They live on the CPU so the same seed gives the same batches on every device.
    """
    torch.manual_seed(seed)
    return Generators(torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))


@dataclass
class Member:
    """One run of a unit: its config, model, data order and dropout stream, and what it has recorded."""

    config: ExperimentConfig
    order: torch.Generator
    model: nn.Sequential
    dropout_stream: torch.Generator  # continues the global RNG stream exactly where a lone run would draw its masks
    history: list[EpochMetrics] = field(default_factory=list)
    pretraining: list[PretrainEpoch] = field(default_factory=list)
    status: Status = "completed"
    error: str | None = None
    diverged_at: dict[str, int] | None = None


class Net(Protocol):
    """The models of a unit as the loop sees them: one nn.Sequential (SingleNet) or a stack (stack.py)."""

    optimizer: torch.optim.Optimizer
    count: int  # runs in the unit (M)

    def step(self, split: Split, track_grads: bool) -> StepBody:
        """The training step on a row of batch indices (run 0's batch, then run 1's...); eager or captured."""

    def eval_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval mode, no autograd: the summed loss and correct count of each run on one batch."""

    def set_training(self, mode: bool) -> None: ...

    def graph_state(self) -> list[torch.Tensor]:
        """Every tensor a training step changes besides optimizer state (restored after capture)."""

    def random_streams(self) -> list[torch.Generator]:
        """The generators a training step draws from besides the device's default one (registered with a
        CUDA graph, and restored after its warm-up)."""

    def diagnose(
        self, inputs: torch.Tensor, targets: torch.Tensor, activations: Sequence[str], which: Sequence[int]
    ) -> list[Diagnostics]:
        """The diagnostics probe (diagnostics.py) of the runs at ``which``, in that order, on one probe
        batch; each run's activation named in ``activations``."""

    def models(self) -> list[nn.Sequential]:
        """Each run's model with the current weights (for run_finished)."""


class SingleNet:
    """One nn.Sequential trained as itself."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, bf16: bool = False) -> None:
        self.model, self.optimizer, self.loss_fn, self.count = model, optimizer, nn.CrossEntropyLoss(), 1
        self.bf16 = bf16  # the hand-written pass multiplies bf16 operands (device.matmul_operands_bf16)

    @classmethod
    def for_training(cls, members: list[Member], device: torch.device, graphed: bool) -> SingleNet:
        [member] = members
        config = member.config
        optimizer = OPTIMIZERS[config.optimizer.name].build(
            member.model.parameters(), config.optimizer, device, graphed, config.train.compile
        )
        return cls(member.model, optimizer, matmul_operands_bf16(config.train.bf16_matmul, device))

    def step(self, split: Split, track_grads: bool) -> StepBody:
        """One optimization step on the samples at ``index``. With ``track_grads`` it also measures each Linear weight's gradient norm (a few small
        reductions, no host sync)."""
        model, loss_fn, optimizer_step = self.model, self.loss_fn, plain_step(self.optimizer)
        weights = [layer.weight for layer in linear_layers(model)]

        def autograd_pass(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(inputs)
            loss = loss_fn(logits, targets)
            loss.backward()
            return loss.detach(), logits.detach()

        forward_backward = single_pass(model, split.x.device, self.bf16) or autograd_pass

        def body(index: torch.Tensor) -> StepOut:
            inputs, targets = split.x.index_select(0, index), split.y.index_select(0, index)
            loss, logits = forward_backward(inputs, targets)
            grad_norm = torch.stack([w.grad.norm() for w in weights]) if track_grads else None
            optimizer_step()
            return StepOut(loss, (logits.argmax(1) == targets).sum(), grad_norm)

        return body

    def eval_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(inputs)
        return self.loss_fn(logits, targets) * len(targets), (logits.argmax(1) == targets).sum()

    def set_training(self, mode: bool) -> None:
        self.model.train(mode)

    def diagnose(
        self, inputs: torch.Tensor, targets: torch.Tensor, activations: Sequence[str], which: Sequence[int]
    ) -> list[Diagnostics]:
        return [probe(self.model, self.loss_fn, inputs, targets, activations[0]) for _ in which]

    def graph_state(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def random_streams(self) -> list[torch.Generator]:
        return []  # nn.Dropout draws from the device's default generator

    def models(self) -> list[nn.Sequential]:
        return [self.model]


# ---- units of work ------------------------------------------------------------------------------

NetFactory = Callable[[list[Member], torch.device, bool], Net]  # (members, device, graphed) -> Net


def train(config: ExperimentConfig, data: Dataset, device: torch.device, observer: Observer) -> TrainResult:
    """Train one model as ``config`` says and evaluate it after every epoch."""
    [result] = train_unit([config], data, device, observer, SingleNet.for_training)
    return result


def train_unit(
    configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device, observer: Observer, make_net: NetFactory
) -> list[TrainResult]:
    """Train ``configs`` together (they share a batch key: data and architecture agree) as ``make_net``
    assembles them; one TrainResult per config, and run_done for every run that started."""
    clock = time.perf_counter()
    first = configs[0]
    plan = BatchPlan.make(
        len(data.train), first.data.batch_size, first.data.drop_last, first.model.has_batchnorm_layers
    )
    configure_math(first, device, stacked=len(configs) > 1)  # tf32 and bf16_matmul are in the batch key: all agree
    members: list[Member] = []
    started: list[ExperimentConfig] = []
    try:
        for config in configs:
            generators = seed_everything(config.seed)
            observer.run_started(config, plan)  # may fail too: a recorder creating the run's folder on a full disk
            started.append(config)
            members.append(_build_member(config, generators, data, device, observer))
        graphed = uses_cuda_graphs(first, device, plan)
        if all(member.status != "completed" for member in members):
            raise AllDiverged  # in pre-training: nothing is left to train
        net = make_net(members, device, graphed)
        fit(net, members, data, plan, observer, graphed)
    except AllDiverged:
        pass
    except KeyboardInterrupt:
        for member in members:
            member.status = "interrupted" if member.status == "completed" else member.status
        members += [_unbuilt(config, "interrupted") for config in configs[len(members) :]]
    except Exception:  # recorded in the runs; the CLI reports it and exits non-zero
        text = traceback.format_exc()
        members += [_unbuilt(config, "failed") for config in configs[len(members) :]]
        for member in members:
            member.status, member.error = "failed", text
    seconds = (time.perf_counter() - clock) / len(configs)  # each run's share of the unit's wall time
    results = [_result(member, seconds, plan) for member in members]
    with deferred():  # the unit's runs end together: a signal waits until every started one is recorded
        for config, result in zip(started, results):
            observer.run_done(config, result)
    return results


def _build_member(
    config: ExperimentConfig, generators: Generators, data: Dataset, device: torch.device, observer: Observer
) -> Member:
    model = build_mlp(config.model, data.num_features, data.num_classes).to(device)  # may fail to allocate
    pretraining: list[PretrainEpoch] = []
    diverged: PretrainingDiverged | None = None
    if config.model.init == "rbm":

        def pretrain_epoch_done(layer: int, epoch: int, error: float, seconds: float) -> None:
            pretraining.append(PretrainEpoch(layer, epoch, error, seconds))
            observer.pretrain_epoch_done(config, pretraining[-1])

        try:
            pretrain_rbm(model, data.train.x, config.model.rbm, generators.pretrain, pretrain_epoch_done)
        except PretrainingDiverged as exc:
            diverged = exc
    stream = torch.Generator(device=device)
    stream.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    member = Member(config, generators.order, model, stream, pretraining=pretraining)
    if diverged is not None:  # the run ends here; the rest of its unit trains on (its slice of a stack is ignored)
        member.status, member.error = "diverged", str(diverged)
        member.diverged_at = {"pretraining_layer": diverged.layer, "pretraining_epoch": diverged.epoch}
    return member


def _unbuilt(config: ExperimentConfig, status: Status) -> Member:
    """A run of the unit that ended before its model was built."""
    return Member(config, torch.Generator(), nn.Sequential(), torch.Generator(), status=status)


def _result(member: Member, seconds: float, plan: BatchPlan) -> TrainResult:
    return TrainResult(
        member.status,
        tuple(member.history),
        seconds,
        plan,
        parameter_count(member.model),
        member.error,
        tuple(member.pretraining),
        member.diverged_at,
    )


def uses_cuda_graphs(config: ExperimentConfig, device: torch.device, plan: BatchPlan) -> bool:
    """train.cuda_graphs applies on CUDA when every batch is full (a graph has fixed shapes)."""
    return (
        config.train.cuda_graphs
        and device.type == "cuda"
        and plan.steps > 0
        and plan.samples == plan.steps * plan.batch_size
    )


# ---- the loop -----------------------------------------------------------------------------------


def fit(net: Net, members: list[Member], data: Dataset, plan: BatchPlan, observer: Observer, graphed: bool) -> None:
    """Every epoch of every run in the unit: train, evaluate, read the epoch's numbers in one host sync,
    and report each run's epoch; a run that diverges stops recording (its slice of a stack no longer matters)."""
    settings = members[0].config.train  # part of the batch key: all runs agree
    track = settings.step_grad_norms
    body = net.step(data.train, track)
    if settings.compile:
        body = compile_step(body)  # compiled on its first call (with cuda_graphs: in the capture's warm-up)
    steps = _capture(net, body, plan, len(members), data.train.x.device, track) if graphed else None
    probe_x, probe_y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    activations = [member.config.model.activation for member in members]
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        net.set_training(True)
        loss_sum, correct, grad_norms = train_epoch(
            body, net.optimizer, data.train, plan, members, epoch, observer, steps
        )
        values = read_sums(
            epoch_sums(
                (loss_sum, correct),
                grad_norms,
                evaluate(net, data.test),
                evaluate(net, data.train) if settings.eval_train else None,
            )
        )
        live = _finite_evaluations(members, values, epoch, plan)
        diagnostics = (
            dict(zip(live, net.diagnose(probe_x, probe_y, activations, live), strict=True))
            if settings.diagnostics
            else {}
        )
        seconds = (time.perf_counter() - start) / len(members)  # each run's share of the epoch's wall time
        for index in live:
            mine = {name: per_run[index] for name, per_run in values.items()}
            members[index].history.append(epoch_metrics(epoch, mine, plan, data, seconds, diagnostics.get(index)))
            observer.epoch_done(members[index].config, members[index].history[-1])
    for member, model in zip(members, net.models()):
        if member.status == "completed":
            observer.run_finished(member.config, model, data)


def _finite_evaluations(members: Sequence[Member], values: Mapping[str, Any], epoch: int, plan: BatchPlan) -> list[int]:
    """The runs still training after this epoch's evaluation. One whose evaluated loss is non-finite
    (its logits are: a nan batch-norm statistic, weights gone bad without the training loss showing it)
    is diverged here, the epoch unrecorded: a finished run never reports a nan."""
    checked = [name for name in ("test_loss", "train_eval_loss") if name in values]
    live = []
    for index, member in enumerate(members):
        if member.status != "completed":
            continue
        bad = next((name for name in checked if not math.isfinite(values[name][index])), None)
        if bad is None:
            live.append(index)
            continue
        member.status, member.diverged_at = "diverged", {"epoch": epoch, "step": plan.steps}
        what = f"the {bad.replace('_', ' ')} became {values[bad][index]}"
        member.error = f"{what} at epoch {epoch} (the training loss stayed finite)"
    if not live:
        raise AllDiverged
    return live


def train_epoch(
    body: StepBody,
    optimizer: torch.optim.Optimizer,
    split: Split,
    plan: BatchPlan,
    members: Sequence[Member],
    epoch: int,
    observer: Observer,
    graphed: GraphedSteps | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass of every run over its own shuffled index slices (the models in train mode); returns the
    (M,) summed losses, the (M,) correct counts and the (steps, M, K) per-step gradient norms (None if
    not tracked), on the device.

    Each step's losses (and gradient norms) go into device buffers; every DIVERGENCE_CHECK_STEPS steps
    (and at the end) the host checks the new entries (see _Watch)."""
    count, device, runs = len(members), split.x.device, [m.config for m in members]
    permutations = torch.stack([torch.randperm(len(split), generator=m.order) for m in members]).to(
        device, non_blocking=True
    )
    watch = _Watch(members, epoch, plan.steps)
    if graphed is not None:
        used = permutations[:, : plan.steps * plan.batch_size].view(count, plan.steps, plan.batch_size)
        graphed.start_epoch(used.transpose(0, 1).reshape(plan.steps, count * plan.batch_size))
        for done in range(graphed.per_replay, plan.steps + 1, graphed.per_replay):
            graphed.replay()
            observer.step_done(runs, epoch, done, graphed.losses[:done], done * plan.batch_size)
            watch.check(graphed.losses, graphed.grad_norms, done)
        norms = graphed.grad_norms.clone() if graphed.grad_norms is not None else None
        return per_sample_sum(graphed.losses, plan), graphed.correct.clone(), norms
    losses = torch.zeros(plan.steps, count, device=device)
    correct = torch.zeros(count, device=device)
    norms = None
    seen = 0
    zero_grad = plain_zero_grad(optimizer)
    for step in range(plan.steps):
        index = permutations[:, step * plan.batch_size : (step + 1) * plan.batch_size]
        zero_grad()
        out = body(index.reshape(-1))
        losses[step] = out.loss
        if out.grad_norm is not None:
            norms = torch.zeros(plan.steps, count, out.grad_norm.shape[-1], device=device) if norms is None else norms
            norms[step] = out.grad_norm
        correct += out.correct
        seen += index.shape[1]
        observer.step_done(runs, epoch, step + 1, losses[: step + 1], seen)
        watch.check(losses, norms, step + 1)
    return per_sample_sum(losses, plan), correct, norms


class _Watch:
    """Divergence checks over the step buffers, every DIVERGENCE_CHECK_STEPS steps and at the epoch's
    end: one host sync per window. A run whose loss (or gradient norm) went bad is marked diverged at
    its first bad step; when every run of the unit has diverged, training stops."""

    def __init__(self, members: Sequence[Member], epoch: int, steps: int) -> None:
        self.members, self.epoch, self.steps, self.checked = members, epoch, steps, 0

    def check(self, losses: torch.Tensor, grad_norms: torch.Tensor | None, done: int) -> None:
        if done - self.checked < DIVERGENCE_CHECK_STEPS and done != self.steps:
            return
        start, self.checked = self.checked, done
        bad = bad_steps(losses[start:done], None if grad_norms is None else grad_norms[start:done])
        gone = [i for i, member in enumerate(self.members) if member.status != "completed"]
        if gone:
            bad[:, gone] = False
        if not bad.any():  # the window's host sync
            return
        for index in bad.any(0).nonzero().flatten().tolist():
            step = start + int(bad[:, index].nonzero()[0])
            norms = None if grad_norms is None else grad_norms[step, index].tolist()
            member = self.members[index]
            member.status, member.diverged_at = "diverged", {"epoch": self.epoch, "step": step + 1}
            member.error = str(Diverged(self.epoch, step + 1, losses[step, index].item(), norms))
        if all(member.status != "completed" for member in self.members):
            raise AllDiverged


def _capture(
    net: Net, body: StepBody, plan: BatchPlan, count: int, device: torch.device, track_grads: bool
) -> GraphedSteps:
    """Capture the unit's training step (see cuda_graphs.py)."""
    layers = len(linear_layers(net.models()[0])) if track_grads else 0
    return GraphedSteps(
        body,
        net.graph_state(),
        net.optimizer,
        plan.steps,
        count * plan.batch_size,
        (count,),
        device,
        layers,
        net.random_streams(),
    )


def per_sample_sum(losses: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
    """Per-step mean losses (steps, M) -> (M,) summed over samples: every batch but a partial last one is full."""
    total = losses.sum(0) * plan.batch_size
    if plan.steps and plan.samples != plan.steps * plan.batch_size:
        total += losses[-1] * (plan.samples - plan.steps * plan.batch_size)
    return total


@torch.inference_mode()
def evaluate(net: Net, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval mode (dropout off, batch-norm running stats), no autograd: each run's summed loss and correct
    count on ``split`` as two (M,) device tensors. The models are left in train mode."""
    net.set_training(False)
    loss_sum = torch.zeros(net.count, device=split.x.device)
    correct = torch.zeros(net.count, device=split.x.device)
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        batch_loss, batch_correct = net.eval_batch(
            split.x[start : start + EVAL_BATCH_SIZE], split.y[start : start + EVAL_BATCH_SIZE]
        )
        loss_sum += batch_loss
        correct += batch_correct
    net.set_training(True)
    return loss_sum, correct


def evaluate_model(model: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """evaluate() for one plain model (checks, extra evaluations): its summed cross-entropy loss and
    correct count as device scalars; the model's train/eval mode is left as it was."""
    was_training = model.training
    loss_sum, correct = evaluate(SingleNet(model), split)
    model.train(was_training)
    return loss_sum[0], correct[0]


Pair = tuple[torch.Tensor, torch.Tensor]  # (summed loss, correct count) per run, on the device


def epoch_sums(
    train: Pair, grad_norms: torch.Tensor | None, test: Pair, train_eval: Pair | None
) -> dict[str, torch.Tensor]:
    """The epoch's device totals by name, each (M,). ``grad_norms`` (steps, M, K) per-step gradient
    norms become each layer's mean over the steps."""
    sums = {"train_loss": train[0], "train_correct": train[1], "test_loss": test[0], "test_correct": test[1]}
    if train_eval is not None:
        sums["train_eval_loss"], sums["train_eval_correct"] = train_eval
    if grad_norms is not None:
        sums |= {f"train_grad_norm_{k}": mean for k, mean in enumerate(grad_norms.mean(0).unbind(-1), start=1)}
    return sums


def read_sums(sums: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The host sync for an epoch's metrics: every total in one transfer (name -> list over runs)."""
    return dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True))


def epoch_metrics(
    epoch: int,
    values: Mapping[str, float],
    plan: BatchPlan,
    data: Dataset,
    seconds: float,
    diagnostics: Diagnostics | None,
) -> EpochMetrics:
    """One run's epoch totals (read_sums) as means; step gradient norms join the diagnostics."""
    if diagnostics is not None and "train_grad_norm_1" in values:
        layers = range(1, len(diagnostics.grad_norm) + 1)
        diagnostics = replace(diagnostics, train_grad_norm=tuple(values[f"train_grad_norm_{k}"] for k in layers))
    n, tested = len(data.train), len(data.test)
    train_eval = (
        (values["train_eval_loss"] / n, values["train_eval_correct"] / n)
        if "train_eval_loss" in values
        else (None, None)
    )
    return EpochMetrics(
        epoch,
        values["train_loss"] / plan.samples,
        values["train_correct"] / plan.samples,
        values["test_loss"] / tested,
        values["test_correct"] / tested,
        seconds,
        *train_eval,
        diagnostics,
    )


# ---- engines ------------------------------------------------------------------------------------


class Engine(Protocol):
    """Trains a list of configs on one dataset; a batched engine can train them together."""

    def run(
        self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device, observer: Observer
    ) -> list[TrainResult]: ...


class SequentialEngine:
    """One model after another; stops early if a run is interrupted."""

    def run(
        self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device, observer: Observer
    ) -> list[TrainResult]:
        results = []
        for config in configs:
            results.append(train(config, data, device, observer))
            if results[-1].status == "interrupted":
                break
        return results
