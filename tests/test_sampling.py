"""Bernoulli draws (components/sampling.py): torch's kernels' values and generator states, bit for bit."""

from __future__ import annotations

import pytest
import torch

from dl_lab.components.sampling import bernoulli_draws, bernoulli_sample

SHAPES = [(1,), (7, 3), (100, 512), (1000, 784)]
CPU = torch.device("cpu")


def states(generator: torch.Generator | None):
    """get and set for ``generator``'s state, or the global generator's."""
    if generator is None:
        return torch.get_rng_state, torch.set_rng_state
    return generator.get_state, generator.set_state


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", [0.5, 0.7, 0.999])
@pytest.mark.parametrize("own_generator", [False, True])
def test_draws_are_bernoulli_s_and_leave_the_generator_where_it_does(shape, keep, own_generator):
    generator = torch.Generator().manual_seed(11) if own_generator else None
    get, put = states(generator)
    before = get()
    expected = torch.empty(shape).bernoulli_(keep, generator=generator)
    after = get()
    put(before)
    draws = bernoulli_draws(shape, keep, generator, CPU)
    assert draws.dtype == torch.float32 and torch.equal(draws, expected)
    assert torch.equal(get(), after)
    if expected.numel() > 100:
        assert 0.4 * keep < expected.mean() < min(1.0, 1.6 * keep)  # real draws, not a constant


@pytest.mark.parametrize("shape", SHAPES)
def test_samples_are_torch_bernoullis_and_leave_the_generator_where_it_does(shape):
    probabilities = torch.rand(shape)
    probabilities.view(-1)[: min(3, probabilities.numel())] = torch.tensor([0.0, 1.0, 0.5])[: probabilities.numel()]
    before = torch.get_rng_state()
    expected = torch.bernoulli(probabilities)
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    samples = bernoulli_sample(probabilities)
    assert samples.dtype == torch.float32 and torch.equal(samples, expected)
    assert torch.equal(torch.get_rng_state(), after)
    assert samples.view(-1)[0] == 0 and (samples.numel() < 2 or samples.view(-1)[1] == 1)  # p = 0 and p = 1


def test_other_precisions_keep_torch_bernoulli():
    probabilities = torch.rand(50, 20, dtype=torch.float64)
    before = torch.get_rng_state()
    expected = torch.bernoulli(probabilities)
    torch.set_rng_state(before)
    samples = bernoulli_sample(probabilities)
    assert samples.dtype == torch.float64 and torch.equal(samples, expected)
