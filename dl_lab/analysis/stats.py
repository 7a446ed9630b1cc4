"""Statistics over seeds: mean, spread, confidence intervals and paired tests (scipy does the maths:
Student's t distribution from scipy.special, a quarter of the import time of scipy.stats; the
tests check the results against scipy.stats).

Seeds are matched across variants (seed i of every variant uses the same value), so differences are
tested pairwise: the paired t-test on per-seed differences removes the shared init/data-order noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SEEDS = 2  # below this a spread, interval or test cannot be computed


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one value
    ci95: tuple[float, float] | None  # Student-t interval for the mean


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    from scipy.special import stdtrit  # Student's t quantile

    n = len(values)
    mean = statistics.fmean(values)
    if n < MIN_SEEDS:
        return Summary(n, mean, None, None)
    std = statistics.stdev(values)
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_difference: float  # variant minus baseline
    p_value: float | None  # two-sided paired t-test; None when it cannot be computed
    note: str  # why p is missing, when it is


def paired_test(variant: Sequence[float], baseline: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of variant vs baseline over matched seeds (scipy.stats.ttest_rel's p)."""
    from scipy.special import stdtr  # Student's t distribution function

    if len(variant) != len(baseline):
        raise ValueError("paired test needs one value per matched seed on both sides")
    differences = [v - b for v, b in zip(variant, baseline)]
    n = len(differences)
    mean = statistics.fmean(differences) if differences else 0.0
    if n < MIN_SEEDS:
        return PairedTest(n, mean, None, "too few seeds")
    if statistics.pstdev(differences) == 0:
        # Every seed moved by exactly the same amount: the t statistic is undefined.
        return PairedTest(n, mean, None if mean else 1.0, "identical differences on every seed" if mean else "")
    t = mean / (statistics.stdev(differences) / math.sqrt(n))
    return PairedTest(n, mean, float(2 * stdtr(n - 1, -abs(t))), "")


def verdict(test: PairedTest, alpha: float = 0.05, higher_is_better: bool = True) -> str:
    """'better (p=0.003)', 'worse (p=0.01)', 'not significant (p=0.42)' or 'too few seeds to tell'."""
    if test.p_value is None:
        return "too few seeds to tell" if test.note == "too few seeds" else f"cannot test: {test.note}"
    if test.p_value >= alpha or test.mean_difference == 0:
        return f"not significant (p={test.p_value:.3g})"
    better = (test.mean_difference > 0) == higher_is_better
    return f"{'better' if better else 'worse'} (p={test.p_value:.3g})"
