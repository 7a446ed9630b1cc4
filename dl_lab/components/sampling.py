"""Bernoulli draws on the CPU, exactly as torch's kernels draw them, in a fraction of their time.

torch's CPU ``bernoulli_`` and ``bernoulli`` draw one element at a time from the mt19937 generator
under its lock (11 ns and 16 ns per element on a 2-core Intel Xeon). ``torch.rand`` takes the same bits
from the same generator in the same order, faster, and the comparison that turns them into draws then
runs vectorized. So these give the same values, bit for bit, and leave the generator in the same
state (tests/test_sampling.py): dropout masks and RBM samples, and every run's numbers, are what
torch's kernels would make. On CUDA (Philox, another stream) torch's own kernels are called.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bernoulli_draws(
    shape: Sequence[int], keep: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """float32 draws of Bernoulli(``keep``) from ``generator`` (None: the global one): the values of
    ``torch.empty(shape).bernoulli_(keep, generator=generator)``.

    That kernel compares 53 random bits (``random64``) with ``keep`` in double precision, as does
    ``torch.rand`` in float64 (0.68-0.73x the time of dropout masks inside training runs,
    bench/bernoulli.py)."""
    if device.type == "cpu":
        return (torch.rand(shape, dtype=torch.float64, generator=generator) < keep).to(torch.float32)
    return torch.empty(shape, device=device).bernoulli_(keep, generator=generator)


def bernoulli_sample(probabilities: torch.Tensor) -> torch.Tensor:
    """``torch.bernoulli(probabilities)`` from the global generator.

    For float32 probabilities on the CPU that kernel compares a float32 uniform (24 random bits) with
    each probability, as does ``torch.rand`` in float32 (0.36-0.42x the time for (100, 256)). Unlike
    the kernel it does not check that the probabilities lie in [0, 1] (a NaN draws 0 where the kernel
    raises); the RBM's are sigmoid outputs, which always do."""
    if probabilities.device.type == "cpu" and probabilities.dtype == torch.float32:
        return (torch.rand(probabilities.shape) < probabilities).to(torch.float32)
    return torch.bernoulli(probabilities)
