"""CUDA graphs for the training step (train.cuda_graphs): capture once, replay per batch.

A step of a small MLP is dozens of tiny kernels, so on a GPU its time goes to launching them. The
whole step — gathering the batch by index, forward, loss, backward, optimizer step, recording the
loss and the correct count — is captured, several steps in a row, and replayed: one launch per
several steps. The epoch's shuffled indices are copied into a static (steps, batch) table and a
device-side counter picks the row, so nothing changes between replays but the data the graph reads.

Capture needs a few warm-up steps; they run on a copy of the state that is then restored (weights,
batch-norm buffers, optimizer moments, and the random streams dropout draws from), so the run starts
from its own initial weights and draws the masks an eager run would. A stack's per-model dropout
generators are registered with the graph (torch registers the device's default one itself): each
replay reads its streams' current offsets and advances them by what its steps drew, so replay i
draws what eager steps would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

WARMUP_STEPS = 3
MAX_STEPS_PER_GRAPH = 25  # several steps per replay: fewer trips through Python per epoch


class StepOut(NamedTuple):
    """What one training step leaves on the device (shapes for one model; a stack of M adds a leading M)."""

    loss: torch.Tensor  # ()
    correct: torch.Tensor  # ()
    grad_norm: torch.Tensor | None  # (K,): each Linear weight's gradient norm; None when not tracked


# (batch indices) -> StepOut, after forward, backward and optimizer.step()
StepBody = Callable[[torch.Tensor], StepOut]


def steps_per_graph(steps: int) -> int:
    """The largest divisor of the epoch's step count up to MAX_STEPS_PER_GRAPH (replays cover it exactly)."""
    return max(k for k in range(1, min(steps, MAX_STEPS_PER_GRAPH) + 1) if steps % k == 0)


class GraphedSteps:
    """``per_replay`` captured training steps; an epoch is steps / per_replay replays.

    ``body`` trains on one row of the index table and returns the step's loss and correct count
    (shape ``tail``: () for one model, (M,) for a stack), and with ``grad_layers`` > 0 the gradient
    norms of that many Linear layers; ``state`` lists every tensor the warm-up changes besides
    optimizer state (parameters, batch-norm buffers), to be restored after capture; ``streams`` the
    CUDA generators the step draws from besides the device's default one (a stack's dropout streams).
    """

    def __init__(
        self,
        body: StepBody,
        state: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        steps: int,
        row_width: int,
        tail: tuple[int, ...],
        device: torch.device,
        grad_layers: int = 0,
        streams: Sequence[torch.Generator] = (),
    ) -> None:
        self.per_replay = steps_per_graph(steps)
        self.table = torch.zeros(steps, row_width, dtype=torch.long, device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.losses = torch.zeros(steps, *tail, device=device)
        self.correct = torch.zeros(tail, device=device)
        self.grad_norms = torch.zeros(steps, *tail, grad_layers, device=device) if grad_layers else None

        def step() -> None:
            optimizer.zero_grad(set_to_none=False)  # a kernel in the graph: later steps must not accumulate
            out = body(self.table.index_select(0, self.counter).view(-1))
            self.losses.index_copy_(0, self.counter, out.loss.view(1, *tail))
            if self.grad_norms is not None:
                self.grad_norms.index_copy_(0, self.counter, out.grad_norm.view(1, *tail, grad_layers))
            self.correct += out.correct
            self.counter += 1

        snapshot = [t.detach().clone() for t in state]
        self.graph = torch.cuda.CUDAGraph()
        for stream in streams:  # before the warm-up: a torch that refuses it fails before any work
            self.graph.register_generator_state(stream)
        random_states = [torch.cuda.get_rng_state(device), *(stream.get_state() for stream in streams)]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
            for _ in range(WARMUP_STEPS):
                self.counter.zero_()
                step()  # also allocates .grad and the optimizer state the graph will reuse
        torch.cuda.current_stream(device).wait_stream(side)
        self.counter.zero_()
        torch.cuda.set_rng_state(random_states[0], device)  # capturing draws nothing: replays do
        for stream, saved in zip(streams, random_states[1:], strict=True):
            stream.set_state(saved)
        with torch.cuda.graph(self.graph):
            for _ in range(self.per_replay):
                step()
        with torch.no_grad():  # undo the warm-up: start from the run's own initial state
            for tensor, saved in zip(state, snapshot, strict=True):
                tensor.copy_(saved)
            for values in optimizer.state.values():
                for value in values.values():
                    if torch.is_tensor(value):
                        value.zero_()  # moments, momentum buffers and step counts start at 0

    def start_epoch(self, table: torch.Tensor) -> None:
        """``table``: (steps, row_width) batch indices for this epoch."""
        self.table.copy_(table)
        self.counter.zero_()
        self.correct.zero_()

    def replay(self) -> None:
        self.graph.replay()
