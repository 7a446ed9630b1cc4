"""Train several models of one architecture at once: stacked weights and batched matmuls (bmm).

A comparison is many tiny models (seeds of a variant, variants differing only in init or dropout p).
One such model leaves the hardware idle between small kernels; stacking M of them turns every
Linear layer into one batched matmul over (M, batch, features), so M models cost about one launch
sequence. Each model keeps its own init (built exactly as the sequential engine builds it), data
order (its own seeded permutation), dropout masks (its own generator, continuing the RNG stream the
sequential engine would use), batch-norm statistics and optimizer state (optimizers are elementwise,
so one optimizer over stacked tensors is M independent ones). On CPU the metrics match sequential
training within float rounding (tests/test_batched.py).

Runs are batched when everything but name, seed, init, init_gain and the dropout probability agrees;
other runs go through the sequential engine unchanged.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dl_lab.config import ExperimentConfig
from dl_lab.data import Dataset, Split
from dl_lab.diagnostics import PROBE_SIZE, probe
from dl_lab.engine import (EVAL_BATCH_SIZE, BatchPlan, Diverged, EpochMetrics, Observer, TrainResult, bad_steps,
                           configure_math, epoch_metrics, epoch_sums, per_sample_sum, read_sums, run_graphed_epoch,
                           seed_everything, train, uses_cuda_graphs)
from dl_lab.graphs import GraphedSteps, StepBody, StepOut
from dl_lab.model import build_mlp, parameter_count
from dl_lab.optimizers import OPTIMIZERS
from dl_lab.pretraining import PretrainEpoch, pretrain_rbm
from dl_lab.scheduling import plan_batches
from dl_lab.signals import deferred


class BatchedEngine:
    """Batches what it can (see plan_batches), trains the rest one by one."""

    def __init__(self, min_batch: int = 2) -> None:
        self.min_batch = min_batch

    def run(self, configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device,
            observer: Observer) -> list[TrainResult]:
        results: dict[int, TrainResult] = {}
        for group in plan_batches(configs, self.min_batch):
            if len(group) == 1 and self.min_batch > 1:
                results[group[0]] = train(configs[group[0]], data, device, observer)
                observer.run_done(configs[group[0]], results[group[0]])
            else:
                for index, result in zip(group, train_batched([configs[i] for i in group], data, device, observer)):
                    results[index] = result
            if any(r.status == "interrupted" for r in results.values()):
                break
        return [results[i] for i in sorted(results)]


@dataclass
class _Stack:
    """The stacked parameters and buffers of M models with one architecture."""

    ops: list[tuple]  # ("linear", i) | ("bn", i) | ("act", module) | ("dropout", keep list, keep tensor)
    weights: list[torch.Tensor]  # per Linear: (M, in, out), i.e. transposed: bmm(h, W) needs no transpose
    biases: list[torch.Tensor]  # per Linear: (M, out)
    bn: list[dict[str, torch.Tensor]]  # per BatchNorm1d: weight, bias, running_mean, running_var (M, F)
    bn_settings: list[tuple[float, float]]  # (eps, momentum)

    def parameters(self) -> list[torch.Tensor]:
        """In the order the sequential model lists them (layer by layer, weight then bias)."""
        params, linear, norm = [], 0, 0
        for op in self.ops:
            if op[0] == "linear":
                params += [self.weights[linear], self.biases[linear]]
                linear += 1
            elif op[0] == "bn":
                params += [self.bn[norm]["weight"], self.bn[norm]["bias"]]
                norm += 1
        return params


def _stack(models: list[nn.Sequential], dropout: list[float], device: torch.device) -> _Stack:
    ops: list[tuple] = []
    weights, biases, norms, settings = [], [], [], []
    leaf = lambda tensors: torch.stack([t.detach() for t in tensors]).requires_grad_()  # noqa: E731
    for position, layer in enumerate(models[0]):
        layers = [m[position] for m in models]
        if isinstance(layer, nn.Linear):
            ops.append(("linear", len(weights)))
            weights.append(leaf([l.weight.T for l in layers]))  # (in, out): measured ~20% faster bmm on CPU
            biases.append(leaf([l.bias for l in layers]))
        elif isinstance(layer, nn.BatchNorm1d):
            ops.append(("bn", len(norms)))
            norms.append({"weight": leaf([l.weight for l in layers]), "bias": leaf([l.bias for l in layers]),
                          "running_mean": torch.stack([l.running_mean for l in layers]),
                          "running_var": torch.stack([l.running_var for l in layers])})
            settings.append((layer.eps, layer.momentum))
        elif isinstance(layer, nn.Dropout):
            # keep = 1 - p in double, as nn.Dropout computes it, so the Bernoulli draws match exactly
            keep = [1 - p for p in dropout]
            ops.append(("dropout", keep, torch.tensor(keep, device=device)[:, None, None]))
        else:
            ops.append(("act", layer))
    return _Stack(ops, weights, biases, norms, settings)


def _forward(stack: _Stack, x: torch.Tensor, training: bool, generators: list[torch.Generator]) -> torch.Tensor:
    """x: (M, B, features) -> logits (M, B, classes)."""
    h = x
    for op in stack.ops:
        kind = op[0]
        if kind == "linear":
            h = torch.baddbmm(stack.biases[op[1]].unsqueeze(1), h, stack.weights[op[1]])
        elif kind == "act":
            h = op[1](h)
        elif kind == "bn":
            h = _batchnorm(h, stack.bn[op[1]], *stack.bn_settings[op[1]], training)
        elif training:  # dropout: each model draws from its own stream, as nn.Dropout would
            noise = torch.stack([torch.empty(h.shape[1:], device=h.device).bernoulli_(keep, generator=stream)
                                 for keep, stream in zip(op[1], generators)])
            h = h * noise.div_(op[2])
    return h


def _batchnorm(h: torch.Tensor, state: dict[str, torch.Tensor], eps: float, momentum: float, training: bool) -> torch.Tensor:
    """BatchNorm1d per model over the batch dimension (dim 1)."""
    if training:
        mean = h.mean(dim=1)
        var = h.var(dim=1, unbiased=False)
        with torch.no_grad():
            count = h.shape[1]
            state["running_mean"].mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            state["running_var"].mul_(1 - momentum).add_(var.detach() * count / max(count - 1, 1), alpha=momentum)
    else:
        mean, var = state["running_mean"], state["running_var"]
    normalized = (h - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + eps)
    return normalized * state["weight"].unsqueeze(1) + state["bias"].unsqueeze(1)


def _unstack_into(stack: _Stack, models: list[nn.Sequential]) -> None:
    """Copy the stacked state back into the per-model modules (for diagnostics and hooks)."""
    with torch.no_grad():
        for index, model in enumerate(models):
            linear = norm = 0
            for layer in model:
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(stack.weights[linear][index].T)
                    layer.bias.copy_(stack.biases[linear][index])
                    linear += 1
                elif isinstance(layer, nn.BatchNorm1d):
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(layer, name).copy_(stack.bn[norm][name][index])
                    norm += 1


@torch.inference_mode()
def _evaluate(stack: _Stack, split: Split, models: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model summed loss and correct count on a split, eval mode. Returns two (M,) device tensors."""
    loss_sum = torch.zeros(models, device=split.x.device)
    correct = torch.zeros(models, device=split.x.device)
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        inputs, targets = split.x[start:start + EVAL_BATCH_SIZE], split.y[start:start + EVAL_BATCH_SIZE]
        logits = _forward(stack, inputs.expand(models, -1, -1), False, [])
        n = len(targets)
        loss_sum += F.cross_entropy(logits.reshape(models * n, -1), targets.repeat(models), reduction="none").view(models, n).sum(1)
        correct += (logits.argmax(2) == targets).sum(1)
    return loss_sum, correct


def train_batched(configs: Sequence[ExperimentConfig], data: Dataset, device: torch.device,
                  observer: Observer) -> list[TrainResult]:
    """Train len(configs) models of one architecture together; one TrainResult per config."""
    clock = time.perf_counter()
    count = len(configs)
    models, orders, dropout_streams = [], [], []
    pretraining: list[list[PretrainEpoch]] = [[] for _ in configs]
    histories: list[list[EpochMetrics]] = [[] for _ in configs]
    first = configs[0]  # batch_key: data and architecture agree across the stack
    plan = BatchPlan.make(len(data.train), first.data.batch_size, first.data.drop_last, first.model.has_batchnorm_layers)
    status = ["completed"] * count
    errors: list[str | None] = [None] * count
    diverged_at: list[dict | None] = [None] * count
    configure_math(configs[0])  # tf32 is part of the batch key, so all runs agree
    started = 0
    try:
        for index, config in enumerate(configs):
            generators = seed_everything(config.seed)
            observer.run_started(config, plan)
            started += 1
            model = build_mlp(config.model, data.num_features, data.num_classes).to(device)  # may fail to allocate
            if config.model.init == "rbm":
                pretrain_rbm(model, data.train.x, config.model.rbm, generators.pretrain,
                             lambda record, i=index: (pretraining[i].append(record), observer.pretrain_epoch_done(record)))
            models.append(model)
            orders.append(generators.order)
            # The dropout masks continue the RNG stream exactly where the sequential engine's would.
            stream = torch.Generator(device=device)
            stream.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
            dropout_streams.append(stream)
        stack = _stack(models, [c.model.dropout for c in configs], device)
        # Per-model dropout generators are not registered with CUDA graphs: stacks with dropout run eagerly.
        graphs = uses_cuda_graphs(configs[0], device, plan) and not any(op[0] == "dropout" for op in stack.ops)
        optimizer = OPTIMIZERS[configs[0].optimizer.name].build(stack.parameters(), configs[0].optimizer, device, graphs)
        track = configs[0].train.step_grad_norms  # part of the batch key: all runs agree
        graphed = _graph(stack, optimizer, data.train, plan, count, track) if graphs else None
        _train_epochs(configs, data, stack, optimizer, models, orders, dropout_streams, plan, observer,
                      histories, status, errors, diverged_at, graphed)
    except KeyboardInterrupt:
        status = ["interrupted" if s == "completed" else s for s in status]
    except Exception:
        text = traceback.format_exc()
        status, errors = ["failed"] * count, [text] * count
    seconds = (time.perf_counter() - clock) / count  # each run's share of the batch's wall time
    results = [TrainResult(status[i], tuple(histories[i]), seconds, plan, parameter_count(models[i]) if i < len(models) else 0,
                           errors[i], tuple(pretraining[i]), diverged_at[i]) for i in range(count)]
    with deferred():  # the stack's runs end together: a signal waits until every one is recorded
        for config, result in zip(configs[:started], results):  # observers know only the runs that started
            observer.switch_run(config)
            observer.run_done(config, result)
    return results


def _train_epochs(configs, data, stack, optimizer, models, orders, streams, plan, observer,
                  histories, status, errors, diverged_at, graphed: GraphedSteps | None) -> None:
    count, track = len(configs), configs[0].train.step_grad_norms
    loss_fn = nn.CrossEntropyLoss()
    probe_x, probe_y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    for epoch in range(1, configs[0].train.epochs + 1):
        start = time.perf_counter()
        losses, correct, grad_norms = _train_epoch(stack, optimizer, data.train, plan, orders, streams, epoch, observer,
                                                   graphed, track)
        # Divergence per model: a run that diverged stops recording; its slice of the stack no longer matters.
        bad = bad_steps(losses, grad_norms)
        sums = epoch_sums((per_sample_sum(losses, plan), correct), grad_norms, _evaluate(stack, data.test, count),
                          _evaluate(stack, data.train, count) if configs[0].train.eval_train else None)
        sums["diverged"], sums["first_bad_step"] = bad.any(0).float(), bad.float().argmax(0).float()
        values = read_sums(sums)  # the epoch's one host sync, for every model at once: name -> list over models
        seconds = time.perf_counter() - start
        _unstack_into(stack, models)
        for m, config in enumerate(configs):
            if status[m] != "completed":
                continue
            mine = {name: per_model[m] for name, per_model in values.items()}
            if mine["diverged"]:
                step = int(mine["first_bad_step"])
                norms = grad_norms[step, m].tolist() if grad_norms is not None else None  # a sync, on divergence only
                status[m] = "diverged"
                errors[m] = str(Diverged(epoch, step + 1, losses[step, m].item(), norms))
                diverged_at[m] = {"epoch": epoch, "step": step + 1}
                continue
            diagnostics = probe(models[m], loss_fn, probe_x, probe_y, config.model.activation) if config.train.diagnostics else None
            metrics = epoch_metrics(epoch, mine, plan, data, seconds / count, diagnostics)
            histories[m].append(metrics)
            observer.switch_run(config)
            observer.epoch_done(metrics)
        if all(s != "completed" for s in status):
            return
    for m, config in enumerate(configs):
        if status[m] == "completed":
            observer.switch_run(config)
            observer.run_finished(models[m], data)


def _stack_step(stack: _Stack, optimizer: torch.optim.Optimizer, split: Split, count: int,
                streams: list[torch.Generator], track_grads: bool) -> StepBody:
    """One optimization step of every model; ``index`` holds model 0's batch, then model 1's, ...
    Returns the (M,) losses and correct counts, and with ``track_grads`` the (M, K) gradient norms
    of the Linear weights. Eager or captured (graphs.py)."""
    def body(index: torch.Tensor) -> StepOut:
        batch = index.numel() // count
        inputs = split.x.index_select(0, index).view(count, batch, -1)
        targets = split.y.index_select(0, index).view(count, batch)
        logits = _forward(stack, inputs, True, streams)
        per_model = F.cross_entropy(logits.reshape(count * batch, -1), targets.reshape(-1),
                                    reduction="none").view(count, batch).mean(1)
        per_model.sum().backward()  # the models share no parameters: each gets its own gradient
        grad_norm = torch.stack([w.grad.flatten(1).norm(dim=1) for w in stack.weights], dim=1) if track_grads else None
        optimizer.step()
        return StepOut(per_model.detach(), (logits.detach().argmax(2) == targets).sum(1), grad_norm)

    return body


def _graph(stack: _Stack, optimizer: torch.optim.Optimizer, split: Split, plan: BatchPlan, count: int,
           track_grads: bool) -> GraphedSteps:
    """Capture the stacked training step (stacks without dropout: no generators to replay)."""
    state = [*stack.parameters(), *(norm[name] for norm in stack.bn for name in ("running_mean", "running_var"))]
    return GraphedSteps(_stack_step(stack, optimizer, split, count, [], track_grads), state, optimizer, plan.steps,
                        count * plan.batch_size, (count,), split.x.device, len(stack.weights) if track_grads else 0)


def _train_epoch(stack, optimizer, split: Split, plan: BatchPlan, orders, streams, epoch: int, observer: Observer,
                 graphed: GraphedSteps | None, track_grads: bool):
    """One epoch of every model -> (steps, M) losses, (M,) correct counts, (steps, M, K) gradient norms or None."""
    count, device = len(orders), split.x.device
    permutations = torch.stack([torch.randperm(len(split), generator=g) for g in orders]).to(device, non_blocking=True)
    if graphed is not None:
        used = permutations[:, :plan.steps * plan.batch_size].view(count, plan.steps, plan.batch_size)
        table = used.transpose(0, 1).reshape(plan.steps, count * plan.batch_size)
        losses = run_graphed_epoch(graphed, table, plan, epoch, observer, check=False)
        norms = graphed.grad_norms.clone() if graphed.grad_norms is not None else None
        return losses.clone(), graphed.correct.clone(), norms
    step_on = _stack_step(stack, optimizer, split, count, streams, track_grads)
    losses = torch.zeros(plan.steps, count, device=device)
    norms = torch.zeros(plan.steps, count, len(stack.weights), device=device) if track_grads else None
    correct = torch.zeros(count, device=device)
    seen = 0
    for step in range(plan.steps):
        index = permutations[:, step * plan.batch_size:(step + 1) * plan.batch_size]
        optimizer.zero_grad(set_to_none=True)
        out = step_on(index.reshape(-1))
        losses[step] = out.loss
        if norms is not None:
            norms[step] = out.grad_norm
        correct += out.correct
        seen += index.shape[1]
        observer.step_done(epoch, step + 1, losses[:step + 1], seen)
    return losses, correct, norms
