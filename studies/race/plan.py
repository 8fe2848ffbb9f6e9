"""A race's plan (budget, error level, test, futility) and the records of what its rounds decided: drops, settled
contests, verdicts against the baseline, rounds and the answer. The procedure that fills them is ``procedure``."""
from __future__ import annotations

from dataclasses import dataclass

from studies.errors import UserError

MIN_SEEDS = 3


TESTS = ("friedman", "t")


FUTILITY = 0.2  # a contest whose conditional power at the current trend is below this is settled


@dataclass(frozen=True)
class RacePlan:
    """A race's budget and error level: seeds ``min_seeds..max_seeds``, ``alpha`` for dropping the true best and
    for claiming a difference to the baseline; ``futility``: the conditional power below which a contest is
    settled (0: never)."""

    max_seeds: int
    min_seeds: int = MIN_SEEDS
    alpha: float = 0.05
    direction: str = "maximize"
    test: str = "friedman"  # "friedman": F-Race's ranks within each seed; "t": paired t-test of each pair
    futility: float = 0.0  # races recorded before futility existed replay without it; ``run --race`` sets FUTILITY

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
        if not 0.0 <= self.futility < 1.0:
            raise UserError(f"race futility must be a conditional power in [0, 1), got {self.futility!r}")

    @property
    def looks(self) -> int:
        """Rounds with a test: one after each seed count from ``min_seeds`` to ``max_seeds``."""
        return self.max_seeds - self.min_seeds + 1

    def level(self, designs: int) -> float:
        """The level of each drop test: ``alpha / looks`` for Friedman's (gated by its omnibus test),
        ``alpha / (looks x (designs - 1))`` for paired t-tests."""
        return self.alpha / (self.looks * (1 if self.test == "friedman" else max(1, designs - 1)))

    def baseline_level(self, seeds: int) -> float:
        """The alpha the contests with the baseline spend at the look after ``seeds`` seeds: O'Brien-Fleming-type
        spending over the looks (``race_stats.spent``), the increments summing to ``alpha``."""
        from studies.race.stats import spent

        before = 0.0 if seeds <= self.min_seeds else spent(self.alpha, (seeds - 1) / self.max_seeds)
        return spent(self.alpha, seeds / self.max_seeds) - before

    def promise(self) -> str:
        """What its error level guarantees, in words (``studies.race.procedure``'s docstring says why)."""
        if self.test == "friedman":
            drops = (f"if all designs tie, any design is dropped with probability at most {self.alpha} (each drop "
                     f"needs a permutation omnibus test to reject); if only some tie, the true best's probability is "
                     f"held at {self.alpha} approximately (Conover's pairs: measured, not proven)")
        else:
            drops = (f"the true best is dropped with probability at most {self.alpha} if the paired differences are "
                     f"normal (Bonferroni over looks and designs; no p below 2^-n from n pairs)")
        futile = (f"; a contest whose conditional power is below {self.futility:g} is settled (no claim), which "
                  f"changes no error level" if self.futility else "")
        return (f"{drops}; a false 'better/worse than the baseline' with probability at most {self.alpha} if the "
                f"paired differences are normal (alpha spent over the looks, Holm's step-down across them){futile}")


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
class Settled:
    """A contest the seeds left cannot decide (conditional power below the plan's ``futility``): no claim, and
    the design stops spending seeds on it. ``against``: the best of that round, or the baseline."""

    design: str
    against: str
    round: int
    seeds: int
    p: float  # the contest's test p at that look (the drop test's; with the baseline, the paired t-test's)
    power: float  # its conditional power at the current trend
    delta: float  # mean difference to ``against``, in the objective's direction (positive: better)


@dataclass(frozen=True)
class Verdict:
    """A design shown better or worse than the baseline at a look: its paired t-test's p below its Holm step's
    level (``level``) of the alpha that look spends."""

    design: str
    better: bool
    round: int
    seeds: int
    p: float
    level: float
    delta: float  # mean difference to the baseline, in the objective's direction (positive: better)


@dataclass(frozen=True)
class Round:
    """One finished round: its seed count, who ran it, who was dropped, which contests with the baseline were
    decided, and who stopped spending seeds after it (every contest decided or settled)."""

    number: int
    seeds: int
    ran: tuple[str, ...]
    best: str
    dropped: tuple[Drop, ...]
    decided: tuple[Verdict, ...] = ()
    stopped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """What a race says: its best design, the designs not told apart from it within the budget (each with its
    contest: settled, or still open at the end), and the designs shown better or worse than the baseline."""

    best: str | None
    tied: tuple[Settled, ...]
    better: tuple[Verdict, ...]
    worse: tuple[Verdict, ...]
    baseline: str | None
