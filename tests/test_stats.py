"""Statistics against values worked out by hand (and cross-checked with R's t.test)."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dl_lab.analysis.stats import paired_test, summarize, verdict


def test_summary_mean_sample_std_and_t_interval():
    s = summarize([0.90, 0.92, 0.94])
    assert s.n == 3 and s.mean == pytest.approx(0.92)
    assert s.std == pytest.approx(0.02)  # sample std, n - 1
    # t(0.975, df=2) = 4.302653; half-width = 4.302653 * 0.02 / sqrt(3) = 0.0496828
    assert s.ci95 == (pytest.approx(0.92 - 0.0496828, abs=1e-6), pytest.approx(0.92 + 0.0496828, abs=1e-6))


def test_one_seed_has_no_spread_or_interval():
    s = summarize([0.9])
    assert (s.n, s.mean, s.std, s.ci95) == (1, 0.9, None, None)


def test_paired_t_test_on_fixed_numbers():
    # Differences 0.01, 0.02, 0.03, 0.02: mean 0.02, sd 0.0081650, t = 0.02 / (0.0081650 / 2) = 4.89898,
    # df 3, two-sided p = 0.016275 (R: t.test(a, b, paired = TRUE)).
    a = [0.95, 0.96, 0.97, 0.96]
    b = [0.94, 0.94, 0.94, 0.94]
    test = paired_test(a, b)
    assert test.mean_difference == pytest.approx(0.02)
    assert test.p_value == pytest.approx(0.016275, abs=2e-6)
    assert verdict(test) == "better (p=0.0163)"
    assert verdict(paired_test(b, a)) == "worse (p=0.0163)"
    assert verdict(test, alpha=0.01) == "not significant (p=0.0163)"
    assert verdict(paired_test(b, a), higher_is_better=False) == "better (p=0.0163)"  # e.g. for a loss


def test_pairing_matters_a_shared_seed_effect_is_removed():
    baseline = [0.90, 0.95, 0.85]
    variant = [x + 0.01 for x in baseline[:2]] + [0.8611]
    paired = paired_test(variant, baseline)
    assert paired.p_value is not None and paired.p_value < 0.05
    assert not math.isnan(paired.p_value)


def test_too_few_or_degenerate_seeds_say_so():
    assert verdict(paired_test([0.9], [0.8])) == "too few seeds to tell"
    same = paired_test([0.9, 0.8], [0.9, 0.8])
    assert same.p_value == 1.0 and verdict(same).startswith("not significant")
    shifted = paired_test([0.91, 0.81], [0.9, 0.8])
    assert shifted.p_value is None and "identical differences" in verdict(shifted)
    with pytest.raises(ValueError):
        paired_test([0.9, 0.8], [0.9])


ACCURACY = st.integers(0, 10_000).map(lambda correct: correct / 10_000)  # a test accuracy on 10,000 images


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(ACCURACY, ACCURACY), min_size=2, max_size=12),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_p_values_and_intervals_equal_scipy_stats(pairs, confidence):
    """The t distribution comes from scipy.special (a lighter import): same numbers as scipy.stats."""
    from scipy import stats

    variant, baseline = [a for a, _ in pairs], [b for _, b in pairs]
    assume(statistics.pstdev([a - b for a, b in pairs]) > 1e-9)  # identical differences: tested above
    test = paired_test(variant, baseline)
    reference = stats.ttest_rel(variant, baseline).pvalue
    assert test.p_value == pytest.approx(reference, rel=1e-9, abs=1e-15)
    summary = summarize(variant, confidence)
    if summary.std:
        low, high = stats.t.interval(confidence, len(variant) - 1, loc=summary.mean, scale=stats.sem(variant))
        assert summary.ci95 == (pytest.approx(low, rel=1e-9, abs=1e-12), pytest.approx(high, rel=1e-9, abs=1e-12))
