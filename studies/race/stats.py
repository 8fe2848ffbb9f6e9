"""The tests behind a race (``studies.race.procedure``): who is worse than the best, who differs from the baseline, and
whether the seeds left could still tell two designs apart.

- ``p_friedman``: F-Race's drop test (Conover's post-hoc pairs, floored by a permutation omnibus test);
- ``p_worse``: the one-sided paired t-test of the ``t`` path, never below the sign test's ``2^-n``;
- ``p_paired``: the report's two-sided paired t-test (``report.stats`` uses it), for contests with the baseline;
- ``spent``: the O'Brien-Fleming-type alpha-spending function (Lan & DeMets 1983) that spreads the baseline
  contests' alpha over the looks, most of it at the last one;
- ``conditional_power``: stochastic curtailment's conditional power at the current trend (Lan, Simon & Halperin
  1982; Lachin 2005), the futility rule's measure.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy import special, stats


def p_friedman(alive: list[str], values: Mapping[str, Mapping[int, float]], k: int, sign: float, best: str,
                level: float, gate: list[str] | None = None) -> dict[str, float]:
    """F-Race's test on the seeds (blocks) every running design completed: ranks within each seed, then each
    design's one-sided p of ranking below ``best`` from Conover's post-hoc t ((n - 1)(m - 1) degrees of freedom),
    never below the p of Friedman's omnibus test (``_p_omnibus``) over ``gate`` (every design of the race: default
    ``alive``) on the seeds all of them completed. The gate is the race's fixed set, not the running one: designs
    stop for futility because of their values, and an omnibus test on a set chosen by the values it tests
    rejects far above its level (6 tied designs, seeds 3..8: some design dropped in 12% of races at 0.05). On the
    fixed set, the test after j complete seeds is a permutation test of a set chosen in advance, whatever stopped
    since: a union bound over j keeps the promise. The floor is computed only when some pair's p is below
    ``level``: it can only raise a p, so it changes no decision otherwise. Returns {design: p}."""
    blocks = [s for s in range(k) if all(s in values.get(d, {}) for d in alive)]
    n, m = len(blocks), len(alive)
    if n < 2 or m < 2:
        return {}
    ranks = _ranks(alive, values, blocks, sign)
    sums = ranks.sum(axis=0)
    square = max(0.0, 2 * (n * float((ranks ** 2).sum()) - float((sums ** 2).sum())) / ((n - 1) * (m - 1)))
    gaps = sums[alive.index(best)] - sums
    with np.errstate(divide="ignore", invalid="ignore"):  # scale 0: every seed ranks them alike, t is +-inf
        t = np.where(gaps == 0, 0.0, gaps / math.sqrt(square))
    p = stats.t.sf(t, df=(n - 1) * (m - 1))
    if p.min() < level:
        p = np.maximum(p, _p_omnibus(ranks, level) if gate is None or list(gate) == list(alive) else _p_gate(
            gate, values, k, sign, level))
    return dict(zip(alive, map(float, p)))


def _ranks(designs: list[str], values: Mapping[str, Mapping[int, float]], blocks: list[int], sign: float):
    """(blocks, designs) ranks within each seed, high: better."""
    return stats.rankdata([[sign * values[d][s] for d in designs] for s in blocks], axis=1)


def _p_gate(gate: list[str], values: Mapping[str, Mapping[int, float]], k: int, sign: float, level: float) -> float:
    """The omnibus p of the race's every design on the seeds all of them completed (1 below 2 such seeds)."""
    blocks = [s for s in range(k) if all(s in values.get(d, {}) for d in gate)]
    return 1.0 if len(blocks) < 2 else _p_omnibus(_ranks(gate, values, blocks, sign), level)


PERMUTATIONS = 19_999  # within-seed permutations behind a Monte-Carlo omnibus p (at least; exact below that)
SCREEN = 999  # permutations of a first, quick look: a p above 5 x the level needs no more


def _p_omnibus(ranks, level: float) -> float:
    """Friedman's omnibus p as a permutation test of the rank sums' spread (``sum_j R_j^2``, which orders tables
    as Friedman's tie-corrected statistic does). When every design ties, a seed's ranks are exchangeable, so the
    p holds its level: exactly when all within-seed permutations are enumerated (at most ``PERMUTATIONS`` or
    20 / ``level`` of them), else up to the sampling error of that many seeded random ones (the same p on every
    replay). A quick look at ``SCREEN`` permutations first: a p above 5 x ``level`` there is returned as it is
    (it keeps every pair above the level; the screen only ever removes drops, so the level still holds).
    Not the chi-square approximation: with 3-8 seeds it is off (0.0498 against the exact 1/36 for 3 designs
    ranked alike on 3 seeds), so its level would be a measurement, not a promise, and mostly wasted (under the
    null it rejects 0-0.7 times as often as its level at these sizes)."""
    quick = _permutation_p(ranks, SCREEN)
    if quick >= 5 * level or math.factorial(ranks.shape[1]) ** ranks.shape[0] <= SCREEN:  # far above, or exact
        return quick
    return _permutation_p(ranks, max(PERMUTATIONS, math.ceil(20 / level)))


def _permutation_p(ranks, resamples: int) -> float:
    """The p of the rank sums' spread over every within-seed permutation, or ``resamples`` seeded ones."""
    def spread(*designs, axis=-1):
        return sum(d.sum(axis=axis) ** 2 for d in designs)

    result = stats.permutation_test(tuple(ranks.T), spread, permutation_type="samples", alternative="greater",
                                    vectorized=True, n_resamples=resamples, rng=np.random.default_rng(0))
    return float(result.pvalue)


def p_worse(diffs: list[float]) -> float:
    """One-sided paired t-test p that the mean difference is below 0 (1.0 with fewer than 2 pairs), never below
    ``2^-n``: the exact sign test's p when all n differences are negative, the surest that n pairs can be."""
    n = len(diffs)
    if n < 2:
        return 1.0
    mean = _mean(diffs)
    spread = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    if spread == 0.0:  # identical differences (values quantised by a finite validation set): the sign test's p
        return 0.5 ** n if mean < 0 else 1.0
    return max(0.5 ** n, float(special.stdtr(n - 1, mean / (spread / math.sqrt(n)))))

def p_paired(diffs) -> float:
    """Two-sided paired t-test p of the differences (``report.stats``'s test of a design against the baseline;
    ``scipy.stats.ttest_1samp``'s p, at a hundredth of its cost, which a race's replays need).

    Equal differences (common with coarse accuracies on small validation sets) leave t undefined; the exact
    sign test takes over (n equal signs: p = 2 / 2**n), never a p of 0. NaN below 2 pairs."""
    diffs = np.asarray(diffs, float)
    n = len(diffs)
    if n < 2:
        return math.nan
    if np.allclose(diffs, diffs[0]):
        return 1.0 if diffs[0] == 0 else min(1.0, 2.0 * 0.5 ** n)
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    return float(2.0 * special.stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n))))


def spent(alpha: float, fraction: float) -> float:
    """The alpha spent by a look at information ``fraction`` (seeds run / seed budget): O'Brien-Fleming-type
    spending, ``2 - 2 Phi(z_{1 - alpha/2} / sqrt(fraction))`` (Lan & DeMets 1983); all of ``alpha`` at 1.
    Early looks get little (3 of 8 seeds: 0.0014 of 0.05), the last most (0.014 after 7 of 8)."""
    if fraction >= 1.0:
        return alpha
    return float(2.0 - 2.0 * special.ndtr(special.ndtri(1.0 - alpha / 2.0) / math.sqrt(fraction)))


def conditional_power(diffs, total: int, level: float, sides: int, floor: bool = False) -> float:
    """The chance that the test at ``total`` pairs rejects at ``level``, given the ``diffs`` so far and that the
    rest follow the current trend (their mean and sd): stochastic curtailment's conditional power (Lan, Simon &
    Halperin 1982) with the z-statistic of the sum and t's critical value at ``total - 1`` degrees of freedom.
    ``sides`` 1: the alternative that the mean is below 0 (the drop test); 2: either direction, the observed one.
    Identical differences (their trend: the same difference again) test as a sign test: 1 when ``total`` such
    pairs would be below ``level`` (``sides`` x 2^-total), else 0, and 0 when they are all 0. ``floor``: the test's
    p is never below that sign-test p (``p_worse``), so a level it cannot reach gives 0 whatever the values."""
    diffs = np.asarray(diffs, float)
    n, rest = len(diffs), total - len(diffs)
    if n < 2 or rest <= 0:
        return math.nan
    if floor and sides * 0.5 ** total >= level:
        return 0.0
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    effect = -mean if sides == 1 else abs(mean)
    if sd == 0.0 or np.allclose(diffs, diffs[0]):
        return 1.0 if effect > 0 and sides * 0.5 ** total < level else 0.0
    critical = float(special.stdtrit(total - 1, 1.0 - level / sides))
    return float(special.ndtr((total * effect - critical * sd * math.sqrt(total)) / (sd * math.sqrt(rest))))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
