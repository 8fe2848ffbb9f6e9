"""Power of the paired comparison with the baseline: what the current seeds can detect, and how many seeds would.

Exact power of the two-sided paired t-test from the noncentral t distribution (``scipy.stats.nct``):
with n pairs, differences of mean d and standard deviation s, the statistic is noncentral t with
n - 1 degrees of freedom and noncentrality d * sqrt(n) / s. The sd is the one the seeds showed.
"""
from __future__ import annotations

import math

from scipy import optimize, stats

from report.errors import ReportError

POWER = 0.8
MAX_SEEDS = 1000  # the most seeds a study accepts (studies.spec)


def check_effect(effect: float | None) -> None:
    """Refuse an effect that is not a positive, finite number (None means: the observed difference)."""
    if effect is not None and not (math.isfinite(effect) and effect > 0):
        raise ReportError(f"effect must be a positive number (a difference in the table's units), got {effect!r}")


def paired_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs to detect a mean difference ``effect``."""
    if n < 2 or not sd > 0:
        return math.nan
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail is negligible for a large noncentrality, where nct.cdf can return NaN.
    lower = float(stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower)


def detectable_difference(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest mean difference ``n`` pairs detect with probability ``power`` (NaN below 2 pairs or sd 0)."""
    if n < 2 or not sd > 0:
        return math.nan
    # Power rises from alpha (difference 0) towards 1: double the bracket until it holds the target.
    upper = sd / math.sqrt(n)
    while paired_power(upper, sd, n, alpha) < power:
        upper *= 2.0
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, upper, xtol=1e-10))


def seeds_needed(effect: float, sd: float, alpha: float, power: float = POWER, max_seeds: int = MAX_SEEDS) -> float:
    """The fewest pairs (seeds) whose paired t-test detects ``effect`` with ``power``; NaN if undefined or over ``max_seeds``.

    Power grows with n, so a bisection over 2..max_seeds finds the first n that reaches it.
    """
    if not sd > 0 or not abs(effect) > 0 or paired_power(effect, sd, max_seeds, alpha) < power:
        return math.nan
    lo, hi = 1, max_seeds  # power(lo) < target <= power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_power(effect, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return float(hi)
