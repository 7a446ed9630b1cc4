"""CUDA graphs for the training step (train.cuda_graphs): one capture, one replay per batch.

A step of a small MLP is dozens of tiny kernels, so on a GPU its time goes to launching them. The
whole step — gathering the batch by index, forward, loss, backward, optimizer step, recording the
loss and the correct count — is captured once and replayed for every batch: one launch per step.
The epoch's shuffled indices are copied into a static (steps, batch) table and a device-side
counter picks the row, so nothing changes between replays but the data the graph reads.

Capture needs a few warm-up steps; they run on a copy of the state that is then restored (weights,
batch-norm buffers, optimizer moments), so the run starts from its own initial weights.
"""

from __future__ import annotations

import torch
from torch import nn

from dl_lab.data import Split

WARMUP_STEPS = 3


class GraphedSteps:
    """A captured training step over ``split``; ``run_epoch`` replays it plan.steps times."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, split: Split,
                 steps: int, batch_size: int) -> None:
        device = split.x.device
        self.table = torch.zeros(steps, batch_size, dtype=torch.long, device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.losses = torch.zeros(steps, device=device)
        self.correct = torch.zeros((), device=device)

        def step() -> None:
            index = self.table.index_select(0, self.counter).view(-1)
            inputs, targets = split.x.index_select(0, index), split.y.index_select(0, index)
            logits = model(inputs)
            loss = loss_fn(logits, targets)
            loss.backward()
            optimizer.step()
            self.losses.index_copy_(0, self.counter, loss.detach().view(1))
            self.correct += (logits.detach().argmax(1) == targets).sum()
            self.counter += 1

        state = list(model.parameters()) + list(model.buffers())
        snapshot = [t.detach().clone() for t in state]
        self.table.copy_(torch.arange(steps * batch_size, device=device).view(steps, batch_size) % len(split))
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
            for _ in range(WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        optimizer.zero_grad(set_to_none=True)  # backward in the capture allocates the grads the replays reuse
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        with torch.no_grad():  # undo the warm-up: start from the run's own initial state
            for tensor, saved in zip(state, snapshot):
                tensor.copy_(saved)
            for values in optimizer.state.values():
                for value in values.values():
                    if torch.is_tensor(value):
                        value.zero_()  # moments, momentum buffers and step counts start at 0

    def start_epoch(self, permutation: torch.Tensor) -> None:
        steps, batch = self.table.shape
        self.table.copy_(permutation[:steps * batch].view(steps, batch))
        self.counter.zero_()
        self.correct.zero_()

    def replay(self) -> None:
        self.graph.replay()
