"""Training and evaluation. Returns data; writing files and drawing the terminal happen elsewhere.

Speed rules kept here: the dataset already sits on the device, batches are index slices of it,
loss and accuracy (and, with train.step_grad_norms, each layer's gradient norm) accumulate on the
device, and the host reads them once per epoch (plus a glance at the step buffers every
DIVERGENCE_CHECK_STEPS steps to stop a diverging run). With train.cuda_graphs the step itself is a
replayed CUDA graph (graphs.py).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Mapping, Protocol, Sequence

import torch
from torch import nn

from dl_lab.config import ExperimentConfig
from dl_lab.data import Dataset, Split
from dl_lab.diagnostics import PROBE_SIZE, Diagnostics, probe
from dl_lab.graphs import GraphedSteps, StepBody, StepOut
from dl_lab.model import build_mlp, linear_layers, parameter_count
from dl_lab.optimizers import OPTIMIZERS
from dl_lab.pretraining import PretrainEpoch, pretrain_rbm

Status = Literal["completed", "failed", "interrupted", "diverged"]
EVAL_BATCH_SIZE = 10_000  # evaluation needs no gradients, so big batches are cheap and fast
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


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over the epoch's training batches, in train mode (dropout on)
    train_acc: float
    test_loss: float  # eval mode, whole test split
    test_acc: float
    seconds: float  # wall time of the epoch: training and evaluation
    train_eval_loss: float | None = None  # train.eval_train: the training split in eval mode
    train_eval_acc: float | None = None
    diagnostics: Diagnostics | None = None  # train.diagnostics: probe-batch measurements and step gradient norms

    def as_dict(self) -> dict[str, float | None]:
        """The scalar metrics, then the diagnostics as named per-layer columns (metrics.csv rows)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "diagnostics"}
        return {**row, **(self.diagnostics.columns() if self.diagnostics else {})}


FINAL_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch walks the training split: `steps` batches of `batch_size` index slices."""

    samples: int  # training samples seen per epoch
    batch_size: int
    steps: int
    dropped: int  # samples left out per epoch (drop_last, or a lone sample batch norm cannot use)

    @classmethod
    def make(cls, n: int, batch_size: int, drop_last: bool, batchnorm: bool) -> "BatchPlan":
        full, rest = divmod(n, batch_size)
        # BatchNorm1d cannot compute batch statistics from one sample, so a final batch of one
        # is dropped even with drop_last: false (documented in docs/config.md).
        keep_rest = rest > 0 and not drop_last and not (batchnorm and rest == 1)
        steps = full + int(keep_rest)
        samples = full * batch_size + (rest if keep_rest else 0)
        return cls(samples, batch_size, steps, n - samples)


@dataclass(frozen=True)
class TrainResult:
    status: Status
    history: tuple[EpochMetrics, ...]
    seconds: float
    plan: BatchPlan
    parameters: int
    error: str | None = None  # traceback text for failed runs, the reason for diverged ones
    pretraining: tuple[PretrainEpoch, ...] = ()
    diverged_at: dict[str, int] | None = None  # {"epoch": e, "step": s} for diverged runs

    @property
    def final(self) -> EpochMetrics | None:
        return self.history[-1] if self.history else None


class Observer:
    """What the engine reports while it trains (progress bars, run recorders). Methods do nothing
    by default; subclasses override what they need."""

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        pass

    def pretrain_epoch_done(self, record: PretrainEpoch) -> None:
        pass

    def step_done(self, epoch: int, step: int, losses: torch.Tensor, samples: int) -> None:
        """``losses``: this epoch's per-step losses so far, on the device; reading them syncs, so throttle."""

    def epoch_done(self, metrics: EpochMetrics) -> None:
        pass

    def run_finished(self, model: nn.Module, data: Dataset) -> None:
        """The trained model, after the last epoch of a completed run (checks, extra evaluations)."""

    def run_done(self, config: ExperimentConfig, result: TrainResult) -> None:
        """A run ended (completed, failed or interrupted); called by engines after each run."""

    def switch_run(self, config: ExperimentConfig) -> None:
        """The following events belong to this (already started) run: engines that train several
        runs at once call it before each run's events."""


@dataclass
class Observers(Observer):
    """Fan-out to several observers."""

    members: Sequence[Observer] = field(default_factory=tuple)

    def run_started(self, config: ExperimentConfig, plan: BatchPlan) -> None:
        for member in self.members:
            member.run_started(config, plan)

    def pretrain_epoch_done(self, record: PretrainEpoch) -> None:
        for member in self.members:
            member.pretrain_epoch_done(record)

    def step_done(self, epoch: int, step: int, losses: torch.Tensor, samples: int) -> None:
        for member in self.members:
            member.step_done(epoch, step, losses, samples)

    def epoch_done(self, metrics: EpochMetrics) -> None:
        for member in self.members:
            member.epoch_done(metrics)

    def run_finished(self, model: nn.Module, data: Dataset) -> None:
        for member in self.members:
            member.run_finished(model, data)

    def run_done(self, config: ExperimentConfig, result: TrainResult) -> None:
        for member in self.members:
            member.run_done(config, result)

    def switch_run(self, config: ExperimentConfig) -> None:
        for member in self.members:
            member.switch_run(config)


@dataclass(frozen=True)
class Generators:
    order: torch.Generator  # shuffles the training data each epoch
    pretrain: torch.Generator  # shuffles pre-training batches, apart so data order is the same with or without


def configure_math(config: ExperimentConfig) -> None:
    """Set per run (the setting is process-wide): TF32 matmuls on CUDA only when the config asks."""
    torch.backends.cuda.matmul.allow_tf32 = config.train.tf32
    torch.backends.cudnn.allow_tf32 = config.train.tf32


def seed_everything(seed: int) -> Generators:
    """Seed init, dropout and RBM sampling (all devices) and return the generators that order the data.

    They live on the CPU so the same seed gives the same batches on every device.
    """
    torch.manual_seed(seed)
    return Generators(torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))


class Engine(Protocol):
    """Trains a list of configs on one dataset; a batched engine can train them together."""

    def run(self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device,
            observer: Observer) -> list[TrainResult]: ...


class SequentialEngine:
    """One model after another; stops early if a run is interrupted."""

    def run(self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device,
            observer: Observer) -> list[TrainResult]:
        results = []
        for config in configs:
            results.append(train(config, data, device, observer))
            observer.run_done(config, results[-1])
            if results[-1].status == "interrupted":
                break
        return results


def train(config: ExperimentConfig, data: Dataset, device: torch.device, observer: Observer) -> TrainResult:
    """Train one model as ``config`` says and evaluate it after every epoch."""
    started = time.perf_counter()
    configure_math(config)
    generators = seed_everything(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    plan = BatchPlan.make(len(data.train), config.data.batch_size, config.data.drop_last, config.model.has_batchnorm_layers)
    history: list[EpochMetrics] = []
    pretraining: list[PretrainEpoch] = []
    status: Status = "completed"
    error = diverged_at = model = None
    probe_x, probe_y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    try:
        observer.run_started(config, plan)  # may fail too: a recorder creating the run's folder on a full disk
        model = build_mlp(config.model, data.num_features, data.num_classes).to(device)  # may fail to allocate
        if config.model.init == "rbm":
            def pretrain_epoch_done(record: PretrainEpoch) -> None:
                pretraining.append(record)
                observer.pretrain_epoch_done(record)

            pretrain_rbm(model, data.train.x, config.model.rbm, generators.pretrain, pretrain_epoch_done)
        graphed = uses_cuda_graphs(config, device, plan)
        optimizer = OPTIMIZERS[config.optimizer.name].build(model.parameters(), config.optimizer, device, graphed)
        body = training_step(model, optimizer, loss_fn, data.train, config.train.step_grad_norms)
        steps = graph_steps(body, model, optimizer, plan, device, config.train.step_grad_norms) if graphed else None
        for epoch in range(1, config.train.epochs + 1):
            start = time.perf_counter()
            model.train()
            loss_sum, correct, grad_norms = train_epoch(body, optimizer, data.train, plan, generators.order, epoch,
                                                        observer, steps)
            values = read_sums(epoch_sums((loss_sum, correct), grad_norms, evaluate(model, loss_fn, data.test),
                                          evaluate(model, loss_fn, data.train) if config.train.eval_train else None))
            diagnostics = probe(model, loss_fn, probe_x, probe_y, config.model.activation) if config.train.diagnostics else None
            history.append(epoch_metrics(epoch, values, plan, data, time.perf_counter() - start, diagnostics))
            observer.epoch_done(history[-1])
        observer.run_finished(model, data)
    except Diverged as exc:
        status, error, diverged_at = "diverged", str(exc), {"epoch": exc.epoch, "step": exc.step}
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception:  # recorded in the run; the CLI reports it and exits non-zero
        status, error = "failed", traceback.format_exc()
    return TrainResult(status, tuple(history), time.perf_counter() - started, plan,
                       parameter_count(model) if model is not None else 0, error, tuple(pretraining), diverged_at)


Pair = tuple[torch.Tensor, torch.Tensor]  # (summed loss, correct count) on the device


def epoch_sums(train: Pair, grad_norms: torch.Tensor | None, test: Pair, train_eval: Pair | None) -> dict[str, torch.Tensor]:
    """The epoch's device totals by name: scalars for one model, (M,) for a stack of M.
    ``grad_norms`` (steps, [M,] K) per-step gradient norms become each layer's mean over the steps."""
    sums = {"train_loss": train[0], "train_correct": train[1], "test_loss": test[0], "test_correct": test[1]}
    if train_eval is not None:
        sums["train_eval_loss"], sums["train_eval_correct"] = train_eval
    if grad_norms is not None:
        sums |= {f"train_grad_norm_{k}": mean for k, mean in enumerate(grad_norms.mean(0).unbind(-1), start=1)}
    return sums


def read_sums(sums: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The host sync for an epoch's metrics: every total in one transfer (floats, or lists over models)."""
    return dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True))


def epoch_metrics(epoch: int, values: Mapping[str, float], plan: BatchPlan, data: Dataset, seconds: float,
                  diagnostics: Diagnostics | None) -> EpochMetrics:
    """One model's epoch totals (read_sums) as means; step gradient norms join the diagnostics."""
    if diagnostics is not None and "train_grad_norm_1" in values:
        layers = range(1, len(diagnostics.grad_norm) + 1)
        diagnostics = replace(diagnostics, train_grad_norm=tuple(values[f"train_grad_norm_{k}"] for k in layers))
    n, tested = len(data.train), len(data.test)
    train_eval = ((values["train_eval_loss"] / n, values["train_eval_correct"] / n) if "train_eval_loss" in values
                  else (None, None))
    return EpochMetrics(epoch, values["train_loss"] / plan.samples, values["train_correct"] / plan.samples,
                        values["test_loss"] / tested, values["test_correct"] / tested, seconds, *train_eval, diagnostics)


def uses_cuda_graphs(config: ExperimentConfig, device: torch.device, plan: BatchPlan) -> bool:
    """train.cuda_graphs applies on CUDA when every batch is full (a graph has fixed shapes)."""
    return (config.train.cuda_graphs and device.type == "cuda" and plan.steps > 0
            and plan.samples == plan.steps * plan.batch_size)


def train_epoch(body: StepBody, optimizer: torch.optim.Optimizer, split: Split, plan: BatchPlan,
                order: torch.Generator, epoch: int, observer: Observer,
                graphed: GraphedSteps | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass over shuffled index slices (the model must be in train mode); returns the summed loss,
    the correct count and the (steps, K) per-step gradient norms (None if not tracked), on the device.

    Each step's loss (and gradient norms) go into device buffers; every DIVERGENCE_CHECK_STEPS steps
    (and at the end) the host checks the new entries for nan/inf (or a loss over DIVERGED_LOSS) and
    raises Diverged naming the first bad step.
    """
    device = split.x.device
    permutation = torch.randperm(len(split), generator=order).to(device, non_blocking=True)
    if graphed is not None:
        table = permutation[:plan.steps * plan.batch_size].view(plan.steps, plan.batch_size)
        losses = run_graphed_epoch(graphed, table, plan, epoch, observer)
        norms = graphed.grad_norms.clone() if graphed.grad_norms is not None else None
        return per_sample_sum(losses, plan), graphed.correct.clone(), norms
    losses = torch.zeros(plan.steps, device=device)
    correct = torch.zeros((), device=device)
    norms = None
    seen = checked = 0
    for step in range(plan.steps):
        index = permutation[step * plan.batch_size:(step + 1) * plan.batch_size]
        optimizer.zero_grad(set_to_none=True)
        out = body(index)
        losses[step] = out.loss
        if out.grad_norm is not None:
            norms = torch.zeros(plan.steps, len(out.grad_norm), device=device) if norms is None else norms
            norms[step] = out.grad_norm
        correct += out.correct
        seen += len(index)
        observer.step_done(epoch, step + 1, losses[:step + 1], seen)
        if step + 1 - checked == DIVERGENCE_CHECK_STEPS or step + 1 == plan.steps:
            _check_finite(losses, norms, checked, step + 1, epoch)
            checked = step + 1
    return per_sample_sum(losses, plan), correct, norms


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, split: Split,
                  track_grads: bool) -> StepBody:
    """One optimization step on the samples at ``index``; eager or captured. With ``track_grads`` it
    also measures each Linear weight's gradient norm (a few small reductions, no host sync)."""
    weights = [layer.weight for layer in linear_layers(model)]

    def body(index: torch.Tensor) -> StepOut:
        inputs, targets = split.x.index_select(0, index), split.y.index_select(0, index)
        logits = model(inputs)
        loss = loss_fn(logits, targets)
        loss.backward()
        grad_norm = torch.stack([w.grad.norm() for w in weights]) if track_grads else None
        optimizer.step()
        return StepOut(loss.detach(), (logits.detach().argmax(1) == targets).sum(), grad_norm)

    return body


def per_sample_sum(losses: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
    """Per-step mean losses (steps, ...) -> summed over samples: every batch but a partial last one is full."""
    total = losses.sum(0) * plan.batch_size
    if plan.steps and plan.samples != plan.steps * plan.batch_size:
        total += losses[-1] * (plan.samples - plan.steps * plan.batch_size)
    return total


def graph_steps(body: StepBody, model: nn.Module, optimizer: torch.optim.Optimizer, plan: BatchPlan,
                device: torch.device, track_grads: bool) -> GraphedSteps:
    """Capture train_epoch's step for one model (see graphs.py)."""
    state = [*model.parameters(), *model.buffers()]
    layers = len(linear_layers(model)) if track_grads else 0
    return GraphedSteps(body, state, optimizer, plan.steps, plan.batch_size, (), device, layers)


def run_graphed_epoch(graphed: GraphedSteps, table: torch.Tensor, plan: BatchPlan, epoch: int,
                      observer: Observer, check: bool = True) -> torch.Tensor:
    """Replay the captured steps over one epoch; returns the per-step losses.

    With ``check`` the losses are checked for divergence every DIVERGENCE_CHECK_STEPS steps (a stack
    of models checks per model at the end of the epoch instead)."""
    graphed.start_epoch(table)
    checked = 0
    for done in range(graphed.per_replay, plan.steps + 1, graphed.per_replay):
        graphed.replay()
        observer.step_done(epoch, done, graphed.losses[:done], done * plan.batch_size)
        if check and (done - checked >= DIVERGENCE_CHECK_STEPS or done == plan.steps):
            _check_finite(graphed.losses, graphed.grad_norms, checked, done, epoch)
            checked = done
    return graphed.losses


def _check_finite(losses: torch.Tensor, grad_norms: torch.Tensor | None, start: int, stop: int, epoch: int) -> None:
    bad = bad_steps(losses[start:stop], None if grad_norms is None else grad_norms[start:stop])
    if bad.any():  # host sync, once per window
        step = start + int(bad.nonzero()[0])
        raise Diverged(epoch, step + 1, losses[step].item(), None if grad_norms is None else grad_norms[step].tolist())


@torch.inference_mode()
def evaluate(model: nn.Module, loss_fn: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval mode (dropout off, batch-norm running stats), no autograd; returns device sums."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        inputs, targets = split.x[start:start + EVAL_BATCH_SIZE], split.y[start:start + EVAL_BATCH_SIZE]
        logits = model(inputs)
        loss_sum += loss_fn(logits, targets) * len(targets)
        correct += (logits.argmax(1) == targets).sum()
    model.train(was_training)
    return loss_sum, correct
