"""Racing designs across seeds (F-Race, Birattari et al. 2002; irace, López-Ibáñez et al. 2016), with stopping
for futility (stochastic curtailment: Lan, Simon & Halperin 1982; Lachin 2005).

Every design runs the first ``min_seeds`` seeds; after that, each round adds one seed to the designs still
running. After each round (a look) every contest that matters to the answer is decided, still open, or settled:

- *the best against each design*: decided when a test (on the seeds all running designs have) shows the design
  worse than the current best; it is then dropped (no longer a candidate for the best);
- *each design against the baseline*: decided when the paired t-test (the report's) shows it better or worse;
- *settled for futility* when the seeds left cannot decide it: its conditional power, the chance that the test
  at the full budget rejects if the rest of the seeds follow the current trend (the observed mean and spread of
  the paired differences; Friedman's contests on within-seed rank differences), is below ``futility`` (0.2 by
  default for ``run --race``), computed at the level of the race's last look (with the baseline: the most
  lenient level its Holm steps can give). A settled contest makes no claim: the design is reported as
  "tied with the best within the budget" or "not told apart from the baseline within the budget".

A design stops spending seeds when all its contests are closed (decided or settled); the best when no one
running needs it; the baseline when no contest with it is open. The race ends when nothing runs, or the seed
budget (``max_seeds``) is used. Its answer (``RaceState.answer``): the best design, the designs not told apart
from it (with p and seeds), and the designs shown better or worse than the baseline (with p and seeds).

Why futility changes no error level: it only ever closes a contest without a claim. Every claim (a drop, a
difference to the baseline) is made by a test at a look at that look's level, whether or not other contests
were settled; stopping a contest removes later chances to claim, never adds one. So the union bounds over
looks below hold with futility as without it (``tests/test_race.py`` checks the tied-designs promise with it
on). One care this needs: Friedman's omnibus gate runs on every design of the race, not on the ones still
running. Futility stops the designs that look tied with the best, so the running set is chosen by the very
values it would be tested on, and a gate on it rejected far above its level (six tied designs: 9-12% at 0.05);
on the fixed set, the test after j complete seeds is one chosen in advance, whatever has stopped since.
What futility costs is power: a contest settled early that the full budget would have decided, which
``benchmarks/race_replay.py`` measures against the full grid's answer.

Contests with the baseline: a two-sided paired t-test of each design (sign test below a spread of 0: no p
below 2 / 2^n) at the alpha its look spends, O'Brien-Fleming-type spending (Lan & DeMets 1983) whose increments
``a_k`` sum to ``alpha``: little at the first looks, most at the last. Holm's step-down runs across the looks:
at look k the i-th smallest p of the open contests faces ``a_k / (m - r - i)``, m the designs but the baseline,
r those decided at earlier looks; a design not tested at a look (settled, or without pairs) counts as p = 1,
which can only remove claims. What holds, when the paired differences are normal: a false "better/worse than
the baseline" with probability at most ``alpha``. When the first false claim is made, every earlier claim was
true, so at most m - m0 designs were decided before it (m0: the designs truly like the baseline) and the true
one's threshold was at most ``a_k / m0``; the union over the m0 of them and over the looks sums to ``alpha``.

Drops: ``alpha`` is split over the planned looks (rounds with a test: ``max_seeds - min_seeds + 1``). Two
tests, each with its own promise:

- ``friedman`` (default; F-Race's): within each seed the designs still in the race are ranked; a design is
  dropped when Conover's post-hoc test says it ranks below the current best, and a pair's p is never below the
  p of Friedman's omnibus test, a permutation test (exact, or from at least 19,999 seeded permutations); each
  look at ``alpha / looks``. What holds: when every design ties (the same distribution of results within a
  seed, ties in the values included), the race drops *any* design with probability at most ``alpha``: a drop
  needs the omnibus test to reject at some look (Bonferroni over the looks), and a permutation p holds its
  level whatever the seeds and ties (a Monte-Carlo one up to its sampling error). When only some designs tie,
  Conover's pairs hold the level for the best one approximately, not provably; ``benchmarks/race_replay.py``
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

Pruning: a race refuses a study with a pruner (``studies.run.launch`` says so before any store is made). A pruned
cell stops at an early epoch, so it has no final value to rank or pair; counting its early value, or leaving
its seed out, would bias the designs' means and ranks, and the pruner's decisions carry no error level. A cell
pruned anyway (a training loop that raises ``optuna.TrialPruned`` itself) counts as done without a value: its
seed leaves Friedman's blocks and its design's mean.

The race is a pure function of the results so far (``race``): any process, any time, replays it from the
finished trials and gets the same rounds, drops and next cells, which is what makes several workers and a
resume after an interruption agree without any shared state beyond the trials themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from studies.race.plan import Answer, Drop, RacePlan, Round, Settled, Verdict


@dataclass
class RaceState:
    """Where a race stands: its finished rounds, the designs still running, the cells it needs next, and
    whether (and why) it is over."""

    plan: RacePlan
    designs: list[str] = field(default_factory=list)
    baseline: str | None = None
    rounds: list[Round] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)  # the designs still spending seeds
    dropped: dict[str, Drop] = field(default_factory=dict)
    settled: dict[str, Settled] = field(default_factory=dict)  # contests with the best settled for futility
    settled_base: dict[str, Settled] = field(default_factory=dict)  # contests with the baseline settled
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # contests with the baseline decided
    last: dict[str, Settled] = field(default_factory=dict)  # each design's latest look at its contest with the best
    means: dict[str, float] = field(default_factory=dict)  # each design's mean over the seeds it ran, in the direction
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

    def seeds_of(self, design: str) -> int:
        """How many seeds ``design`` has run (or has been asked for) so far."""
        return max((r.seeds for r in self.rounds if design in r.ran), default=0)

    def answer(self) -> Answer:
        """The race's answer so far (final once ``finished``). Its best is a design, not the baseline: the last
        round's best, or, when that was the baseline, the design not dropped with the best mean on its seeds."""
        best = self.rounds[-1].best if self.rounds else None
        if best is not None and best == self.baseline:
            left = [d for d in self.designs if d != self.baseline and d not in self.dropped
                    and not math.isnan(self.means.get(d, math.nan))]
            best = max(left, key=lambda d: (self.means[d], -self.designs.index(d))) if left else best
        tied = []
        for d in self.designs:
            if d in (best, self.baseline) or d in self.dropped:
                continue
            look = self.settled.get(d) or self.last.get(d)
            if look is not None:
                tied.append(look)
        verdicts = [self.verdicts[d] for d in self.designs if d in self.verdicts]
        return Answer(best, tuple(tied), tuple(v for v in verdicts if v.better),
                      tuple(v for v in verdicts if not v.better), self.baseline)


def race(designs: Sequence[str], done: Mapping[str, set[int]], values: Mapping[str, Mapping[int, float]],
         plan: RacePlan, baseline: str | None = None) -> RaceState:
    """Replay the race on the results so far.

    ``designs`` in the study's order; ``done[d]``: the seeds of ``d`` that finished (completed or pruned);
    ``values[d][seed]``: the objective of its completed ones. Returns the state, with the cells still needed.
    """
    state = RaceState(plan, designs=list(designs), baseline=baseline, alive=list(designs), seeds=plan.min_seeds)
    sign = 1.0 if plan.direction == "maximize" else -1.0
    while True:
        state.needed = [(d, s) for d in state.alive for s in range(state.seeds) if s not in done.get(d, set())]
        if state.needed:
            return state
        _look(state, values, sign)
        if state.finished:
            state.needed = []
            return state
        state.seeds += 1


def _look(state: RaceState, values: Mapping[str, Mapping[int, float]], sign: float) -> None:
    """One look, after every running design has ``state.seeds`` seeds: drop the designs shown worse than the
    best, decide the contests with the baseline the seeds can, settle those they cannot, and stop every
    design whose contests are all closed."""
    from studies.race import stats as race_stats

    plan, k, baseline, number = state.plan, state.seeds, state.baseline, len(state.rounds) + 1
    ran = tuple(state.alive)
    diffs = lambda a, b: [sign * (values[a][s] - values[b][s]) for s in range(k)  # noqa: E731
                          if s in values.get(a, {}) and s in values.get(b, {})]
    means = {d: _mean([sign * v for s, v in values.get(d, {}).items() if s < k]) for d in ran}
    state.means.update(means)
    ranked = [d for d in ran if not math.isnan(means[d])]
    best = max(ranked, key=lambda d: (means[d], -ran.index(d))) if ranked else ran[0]
    level = plan.level(len(state.designs))
    contenders = [d for d in ran if d not in (best, baseline) and d not in state.settled and d not in state.dropped]
    worse = (race_stats.p_friedman(list(ran), values, k, sign, best, level, gate=state.designs)
             if plan.test == "friedman" else {})
    drops = []
    for d in contenders:
        pairs = diffs(d, best)
        p = worse.get(d, 1.0) if plan.test == "friedman" else race_stats.p_worse(pairs)
        if p < level:
            drops.append(Drop(d, number, k, p, best, _mean(pairs)))
        else:
            state.last[d] = Settled(d, best, number, k, p, math.nan, _mean(pairs))
    for drop in drops:
        state.dropped[drop.design] = drop
        state.last.pop(drop.design, None)
    running = list(ran)  # a dropped design runs on while its contest with the baseline is open
    decided = _versus_baseline(state, running, diffs, race_stats) if baseline in running else []
    if plan.futility and k < plan.max_seeds:
        _settle(state, running, best, diffs, values, sign, race_stats)
    stopped = _stop(state, running, best)
    state.rounds.append(Round(number, k, ran, best, tuple(drops), tuple(decided), tuple(stopped)))
    state.alive = [d for d in running if d not in stopped]
    if not state.alive:
        state.finished, state.reason = True, "every contest decided or settled"
    elif baseline is None and len(state.alive) <= 1:
        state.finished, state.reason = True, "one design left"
    elif k >= plan.max_seeds:
        state.finished, state.reason = True, f"seed budget used ({plan.max_seeds} seeds)"


def _versus_baseline(state: RaceState, running: list[str], diffs, race_stats) -> list[Verdict]:
    """Decide the open contests with the baseline at this look: each design's two-sided paired t-test, Holm at the
    alpha this look spends over every design but the baseline not decided at an earlier look (a design not
    tested now counts as p = 1): Holm's step-down carried across the looks (a group-sequential Holm, as in
    Maurer & Bretz 2013's alpha recycling)."""
    k, number = state.seeds, len(state.rounds) + 1
    level = state.plan.baseline_level(k)
    tested = {}
    for d in running:
        if d != state.baseline and d not in state.verdicts and d not in state.settled_base:
            p = race_stats.p_paired(diffs(d, state.baseline))
            if not math.isnan(p):
                tested[d] = p
    family = len(state.designs) - 1 - len(state.verdicts)
    decided = []
    for step, d in enumerate(sorted(tested, key=lambda d: (tested[d], state.designs.index(d)))):
        if tested[d] >= level / (family - step):
            break
        delta = _mean(diffs(d, state.baseline))
        decided.append(Verdict(d, delta > 0, number, k, tested[d], level / (family - step), delta))
    for verdict in decided:
        state.verdicts[verdict.design] = verdict
    return decided


def _settle(state: RaceState, running: list[str], best: str, diffs, values, sign: float, race_stats) -> None:
    """Settle the open contests the seeds left cannot decide: conditional power at the current trend below the
    plan's ``futility`` at the level of the race's last look (with the baseline: the most its Holm steps give).
    Friedman's contests are judged on within-seed rank differences, the t path's on the values."""
    plan, k, number, baseline = state.plan, state.seeds, len(state.rounds) + 1, state.baseline
    level = plan.level(len(state.designs))
    ranks = _ranks(running, values, k, sign) if plan.test == "friedman" else None
    for d in running:
        if d in (best, baseline) or d in state.settled or d in state.dropped:
            continue
        pairs = diffs(d, best) if ranks is None else [ranks[d][s] - ranks[best][s] for s in ranks[d]]
        power = race_stats.conditional_power(pairs, plan.max_seeds, level, sides=1, floor=plan.test == "t")
        if power < plan.futility:
            look = state.last[d]
            state.settled[d] = Settled(d, best, number, k, look.p, power, look.delta)
    if baseline is None or baseline not in running:
        return
    final = plan.baseline_level(plan.max_seeds)
    for d in running:
        if d == baseline or d in state.verdicts or d in state.settled_base:
            continue
        pairs = diffs(d, baseline)
        power = race_stats.conditional_power(pairs, plan.max_seeds, final, sides=2)
        if power < plan.futility:
            state.settled_base[d] = Settled(d, baseline, number, k, race_stats.p_paired(pairs), power, _mean(pairs))


def _ranks(running: list[str], values, k: int, sign: float) -> dict[str, dict[int, float]]:
    """Each running design's rank within each seed every one of them completed (high: better)."""
    from scipy import stats

    blocks = [s for s in range(k) if all(s in values.get(d, {}) for d in running)]
    if not blocks:
        return {d: {} for d in running}
    table = stats.rankdata([[sign * values[d][s] for d in running] for s in blocks], axis=1)
    return {d: dict(zip(blocks, table[:, j].tolist())) for j, d in enumerate(running)}


def _stop(state: RaceState, running: list[str], best: str) -> list[str]:
    """The designs whose contests are all closed after this look: a design stops when its contest with the best is
    decided (dropped) or settled and its contest with the baseline decided or settled; the best when no one
    running needs it; the baseline when no contest with it is open."""
    baseline = state.baseline

    def open_base(d: str) -> bool:
        return baseline is not None and d not in (baseline,) and d not in state.verdicts and d not in state.settled_base

    closed = {**state.settled, **state.dropped}
    stopped = [d for d in running if d not in (best, baseline) and d in closed and not open_base(d)]
    rest = [d for d in running if d not in stopped and d not in (best, baseline)]
    if best != baseline and not open_base(best) and not rest:
        stopped.append(best)
    if baseline in running and not any(open_base(d) for d in running if d not in stopped) and \
            (best != baseline or not rest):
        stopped.append(baseline)
    return stopped


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
