"""Racing designs across seeds (F-Race, Birattari et al. 2002; irace, López-Ibáñez et al. 2016).

Every design runs the first ``min_seeds`` seeds; after that, each round adds one seed to the designs still in
the race, and after each round a design that a test (on the seeds all have run) shows to be worse than the
current best design is dropped. The baseline is never dropped, so every survivor is compared
with it on the same seeds. The race ends when one design besides the baseline is left, or the seed budget
(``max_seeds``) is used.

Error control: ``alpha`` is split over the planned looks (rounds with a test: ``max_seeds - min_seeds + 1``).
Two tests, each with its own promise:

- ``friedman`` (default; F-Race's): within each seed the designs still in the race are ranked; a design is
  dropped when Conover's post-hoc test says it ranks below the current best, and a pair's p is never below the
  p of Friedman's omnibus test, a permutation test (exact, or from at least 19,999 seeded permutations); each
  look at ``alpha / looks``. What holds: when every design ties (the same distribution of results within a
  seed, ties in the values included), the race drops *any* design with probability at most ``alpha``: a drop
  needs the omnibus test to reject at some look (Bonferroni over the looks), and a permutation p holds its
  level whatever the seeds and ties (a Monte-Carlo one up to its sampling error). When only some designs tie,
  Conover's pairs hold the level for the best one approximately, not provably; ``benchmarks/race.py``
  measures it. Ranks make a design that is last on every seed droppable however much its values swing
  (layer-wise meta-ACON's 31/86/78 %), which a t-test on 3-5 pairs cannot do.
- ``t``: a one-sided paired t-test of each design against the current best at ``alpha / (looks (D - 1))``, its p
  never below ``2^-n`` (the exact sign test's p of n differences all negative: identical differences, which a
  finite validation set makes likely, are as sure as n pairs can be, not certain). What holds, when the paired
  differences are normal: the truly best design T is dropped with probability at most ``alpha`` in every
  configuration. T is dropped only if it tests significantly worse than the current best B at some look, an
  event inside the union, over looks and over the D - 1 other designs j, of "T tests significantly worse than
  j", each of probability at most the test's level when T is at least as good as j. It saves less: nothing is
  dropped before ``2^-n`` is below the level (with seeds 3..8 at 0.05, never for 6 designs).

Pruning: a race refuses a study with a pruner (``studies.runner`` says so before any store is made). A pruned
cell stops at an early epoch, so it has no final value to rank or pair; counting its early value, or leaving
its seed out, would bias the designs' means and ranks, and the pruner's decisions carry no error level. A cell
pruned anyway (a training loop that raises ``optuna.TrialPruned`` itself) counts as done without a value: its
seed leaves Friedman's blocks and its design's mean.

The race is a pure function of the results so far (``race``): any process, any time, replays it from the
finished trials and gets the same rounds, drops and next cells, which is what makes several workers and a
resume after an interruption agree without any shared state beyond the trials themselves.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from acon.errors import UserError

MIN_SEEDS = 3
TESTS = ("friedman", "t")


@dataclass(frozen=True)
class RacePlan:
    """A race's budget and error level: seeds ``min_seeds..max_seeds``, ``alpha`` for dropping the true best."""

    max_seeds: int
    min_seeds: int = MIN_SEEDS
    alpha: float = 0.05
    direction: str = "maximize"
    test: str = "friedman"  # "friedman": F-Race's ranks within each seed; "t": paired t-test of each pair

    def __post_init__(self) -> None:
        if not isinstance(self.min_seeds, int) or self.min_seeds < 2:
            raise UserError(f"a race needs at least 2 seeds before its first test, got min_seeds={self.min_seeds!r}")
        if not isinstance(self.max_seeds, int) or self.max_seeds < self.min_seeds:
            raise UserError(f"a race needs --seeds >= {self.min_seeds} (its first round runs {self.min_seeds} seeds of "
                            f"every design), got {self.max_seeds!r}")
        if not 0.0 < self.alpha < 1.0:
            raise UserError(f"race alpha must be in (0, 1), got {self.alpha!r}")
        if self.test not in TESTS:
            raise UserError(f"unknown race test {self.test!r}; valid choices: {', '.join(TESTS)}")

    @property
    def looks(self) -> int:
        """Rounds with a test: one after each seed count from ``min_seeds`` to ``max_seeds``."""
        return self.max_seeds - self.min_seeds + 1

    def level(self, designs: int) -> float:
        """The level of each test: ``alpha / looks`` for Friedman's (gated by its omnibus test),
        ``alpha / (looks x (designs - 1))`` for paired t-tests."""
        return self.alpha / (self.looks * (1 if self.test == "friedman" else max(1, designs - 1)))

    def promise(self) -> str:
        """What its error level guarantees, in words (``studies.race``'s docstring says why)."""
        if self.test == "friedman":
            return (f"if all designs tie, any design is dropped with probability at most {self.alpha} (each drop needs "
                    f"a permutation omnibus test to reject); if only some tie, the true best's probability is held "
                    f"at {self.alpha} approximately (Conover's pairs: measured, not proven)")
        return (f"the true best is dropped with probability at most {self.alpha} if the paired differences are normal "
                f"(Bonferroni over looks and designs; no p below 2^-n from n pairs)")


@dataclass(frozen=True)
class Drop:
    """A design dropped from the race: in which round, after how many seeds, against which design, how surely."""

    design: str
    round: int
    seeds: int
    p: float
    lost_to: str
    delta: float  # its mean paired difference to ``lost_to`` (negative: worse, in the objective's direction)


@dataclass(frozen=True)
class Round:
    """One finished round: its seed count, who ran it and who was dropped after it."""

    number: int
    seeds: int
    ran: tuple[str, ...]
    best: str
    dropped: tuple[Drop, ...]


@dataclass
class RaceState:
    """Where a race stands: its finished rounds, the designs still in it, the cells it needs next, and whether
    (and why) it is over."""

    plan: RacePlan
    rounds: list[Round] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)
    dropped: dict[str, Drop] = field(default_factory=dict)
    seeds: int = 0  # the seed count the current round brings every design in the race to
    needed: list[tuple[str, int]] = field(default_factory=list)  # (design, seed) cells still to run
    finished: bool = False
    reason: str = ""

    @property
    def round(self) -> int:
        """The number of the round in progress (or the last one, when the race is over)."""
        return len(self.rounds) + (0 if self.finished else 1)

    def wanted(self) -> set[tuple[str, int]]:
        """Every (design, seed) cell the race has asked for so far: finished rounds' and the current one's."""
        cells = {(d, s) for r in self.rounds for d in r.ran for s in range(r.seeds)}
        return cells | {(d, s) for d in self.alive for s in range(self.seeds)}


def race(designs: Sequence[str], done: Mapping[str, set[int]], values: Mapping[str, Mapping[int, float]],
         plan: RacePlan, baseline: str | None = None) -> RaceState:
    """Replay the race on the results so far.

    ``designs`` in the study's order; ``done[d]``: the seeds of ``d`` that finished (completed or pruned);
    ``values[d][seed]``: the objective of its completed ones. Returns the state, with the cells still needed.
    """
    from scipy import stats

    state = RaceState(plan, alive=list(designs), seeds=plan.min_seeds)
    level = plan.level(len(designs))
    sign = 1.0 if plan.direction == "maximize" else -1.0
    while True:
        state.needed = [(d, s) for d in state.alive for s in range(state.seeds) if s not in done.get(d, set())]
        if state.needed:
            return state
        k = state.seeds
        means = {d: _mean([sign * v for s, v in values.get(d, {}).items() if s < k]) for d in state.alive}
        ranked = [d for d in state.alive if not math.isnan(means[d])]
        best = max(ranked, key=lambda d: (means[d], -state.alive.index(d))) if ranked else state.alive[0]
        worse = _p_friedman(state.alive, values, k, sign, best, level, stats) if plan.test == "friedman" else {}
        drops = []
        for d in state.alive:
            if d in (best, baseline):
                continue
            diffs = [sign * (values[d][s] - values[best][s]) for s in range(k)
                     if s in values.get(d, {}) and s in values.get(best, {})]
            p = worse.get(d, 1.0) if plan.test == "friedman" else _p_worse(diffs, stats)
            if p < level:
                drops.append(Drop(d, len(state.rounds) + 1, k, p, best, _mean(diffs) * sign))
        state.rounds.append(Round(len(state.rounds) + 1, k, tuple(state.alive), best, tuple(drops)))
        for drop in drops:
            state.dropped[drop.design] = drop
            state.alive.remove(drop.design)
        left = [d for d in state.alive if d != baseline]
        if len(left) <= 1:
            state.finished, state.reason = True, "one design left besides the baseline" if baseline else "one design left"
        elif k >= plan.max_seeds:
            state.finished, state.reason = True, f"seed budget used ({plan.max_seeds} seeds)"
        if state.finished:
            state.needed = []
            return state
        state.seeds = k + 1


def _p_friedman(alive: list[str], values: Mapping[str, Mapping[int, float]], k: int, sign: float, best: str,
                level: float, stats) -> dict[str, float]:
    """F-Race's test on the seeds (blocks) every design in the race completed: ranks within each seed, then each
    design's one-sided p of ranking below ``best`` from Conover's post-hoc t ((n - 1)(m - 1) degrees of freedom),
    never below the p of Friedman's omnibus test (``_p_omnibus``). That floor is computed only when some pair's p
    is below ``level``: it can only raise a p, so it changes no decision otherwise. Returns {design: p}."""
    import numpy as np

    blocks = [s for s in range(k) if all(s in values.get(d, {}) for d in alive)]
    n, m = len(blocks), len(alive)
    if n < 2 or m < 2:
        return {}
    ranks = stats.rankdata([[sign * values[d][s] for d in alive] for s in blocks], axis=1)  # high rank: better
    sums = ranks.sum(axis=0)
    square = max(0.0, 2 * (n * float((ranks ** 2).sum()) - float((sums ** 2).sum())) / ((n - 1) * (m - 1)))
    gaps = sums[alive.index(best)] - sums
    with np.errstate(divide="ignore", invalid="ignore"):  # scale 0: every seed ranks them alike, t is +-inf
        t = np.where(gaps == 0, 0.0, gaps / math.sqrt(square))
    p = stats.t.sf(t, df=(n - 1) * (m - 1))
    if p.min() < level:
        p = np.maximum(p, _p_omnibus(ranks, level, stats))
    return dict(zip(alive, map(float, p)))


PERMUTATIONS = 19_999  # within-seed permutations behind a Monte-Carlo omnibus p (at least; exact below that)
SCREEN = 999  # permutations of a first, quick look: a p above 5 x the level needs no more


def _p_omnibus(ranks, level: float, stats) -> float:
    """Friedman's omnibus p as a permutation test of the rank sums' spread (``sum_j R_j^2``, which orders tables
    as Friedman's tie-corrected statistic does). When every design ties, a seed's ranks are exchangeable, so the
    p holds its level: exactly when all within-seed permutations are enumerated (at most ``PERMUTATIONS`` or
    20 / ``level`` of them), else up to the sampling error of that many seeded random ones (the same p on every
    replay). A quick look at ``SCREEN`` permutations first: a p above 5 x ``level`` there is returned as it is
    (it keeps every pair above the level; the screen only ever removes drops, so the level still holds).
    Not the chi-square approximation: with 3-8 seeds it is off (0.0498 against the exact 1/36 for 3 designs
    ranked alike on 3 seeds), so its level would be a measurement, not a promise, and mostly wasted (under the
    null it rejects 0-0.7 times as often as its level at these sizes)."""
    quick = _permutation_p(ranks, SCREEN, stats)
    if quick >= 5 * level or math.factorial(ranks.shape[1]) ** ranks.shape[0] <= SCREEN:  # far above, or exact
        return quick
    return _permutation_p(ranks, max(PERMUTATIONS, math.ceil(20 / level)), stats)


def _permutation_p(ranks, resamples: int, stats) -> float:
    """The p of the rank sums' spread over every within-seed permutation, or ``resamples`` seeded ones."""
    import numpy as np

    def spread(*designs, axis=-1):
        return sum(d.sum(axis=axis) ** 2 for d in designs)

    result = stats.permutation_test(tuple(ranks.T), spread, permutation_type="samples", alternative="greater",
                                    vectorized=True, n_resamples=resamples, rng=np.random.default_rng(0))
    return float(result.pvalue)


def _p_worse(diffs: list[float], stats) -> float:
    """One-sided paired t-test p that the mean difference is below 0 (1.0 with fewer than 2 pairs), never below
    ``2^-n``: the exact sign test's p when all n differences are negative, the surest that n pairs can be."""
    n = len(diffs)
    if n < 2:
        return 1.0
    mean = _mean(diffs)
    spread = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    if spread == 0.0:  # identical differences (values quantised by a finite validation set): the sign test's p
        return 0.5 ** n if mean < 0 else 1.0
    return max(0.5 ** n, float(stats.t.cdf(mean / (spread / math.sqrt(n)), df=n - 1)))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


RACE_ATTR = "race"  # the Optuna study's user attr holding a race's plan, designs and baseline (``record``)


def race_state(study) -> RaceState | None:
    """A raced Optuna study's state, replayed from its finished trials; None for a study that is not raced.
    Trials are read by their user attrs ``variant`` and ``seed``; queue races (``spurious``) are left out."""
    from optuna.trial import TrialState

    recorded = study.user_attrs.get(RACE_ATTR)
    if recorded is None:
        return None
    plan, designs, baseline = unpack(recorded)
    done: dict[str, set[int]] = {}
    values: dict[str, dict[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("spurious") or "variant" not in t.user_attrs:
            continue
        label, seed = t.user_attrs["variant"], int(t.user_attrs["seed"])
        done.setdefault(label, set()).add(seed)
        if t.state == TrialState.COMPLETE and t.value is not None:
            values.setdefault(label, {})[seed] = float(t.value)
    return race(designs, done, values, plan, baseline)


RACE_TAG = "acon.race"  # the parent run's record of a race: its plan, designs and baseline (JSON)
DROPPED_TAG = "acon.race.dropped"  # on a dropped design's child runs; on the parent, one per design (+ ".<label>")
STATUS_TAG = "acon.race.status"


def plan_tags(plan: RacePlan, designs: Sequence[str], baseline: str | None) -> dict[str, str]:
    """The parent-run tag that lets anyone replay the race: plan, designs in order, baseline."""
    return {RACE_TAG: json.dumps(record(plan, designs, baseline))}


def record(plan: RacePlan, designs: Sequence[str], baseline: str | None) -> dict[str, Any]:
    """A race as plain data (an Optuna user attr, a tag): its plan, its designs in order, its baseline."""
    return {**asdict(plan), "designs": list(designs), "baseline": baseline}


def unpack(data: Mapping[str, Any]) -> tuple[RacePlan, list[str], str | None]:
    """(plan, designs, baseline) from ``record``'s data."""
    plan = {k: v for k, v in data.items() if k not in ("designs", "baseline")}
    return RacePlan(**plan), list(data.get("designs", [])), data.get("baseline")


def plan_from_tags(tags: Mapping[str, str]) -> tuple[RacePlan | None, list[str], str | None]:
    """(plan, designs, baseline) from a parent run's tags; (None, [], None) for a study that was not raced."""
    if RACE_TAG not in tags:
        return None, [], None
    return unpack(json.loads(tags[RACE_TAG]))


def describe_drop(drop: Drop) -> str:
    """``round 2 (4 seeds): p=0.0011 vs acon_c/all, mean difference -4.1``: a tag's text."""
    return (f"round {drop.round} ({drop.seeds} seeds): p={drop.p:.2g} vs {drop.lost_to}, "
            f"mean difference {drop.delta:+.4g}")


def describe_state(state: RaceState) -> str:
    """The parent run's race status in a line."""
    if state.finished:
        return f"finished after round {len(state.rounds)}: {state.reason}"
    return f"round {state.round}: {len(state.alive)} designs to {state.seeds} seeds each"
