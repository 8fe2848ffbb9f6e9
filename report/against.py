"""Two studies of the same designs (a short and a long schedule, two datasets, two models): do they rank alike?

``report A --against B``: Kendall's tau of the common designs' final means with a seeded bootstrap interval
(``report.ranking``: paired over the seeds both studies ran), each design's difference to the baseline in
both (``report.stats``, as the ablation table computes it), and a one-line verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from report import ranking
from report.collect import StudyRuns
from report.stats import ablation_stats
from report.tables import short_variant

HEADING = "Against another study: do the two rank the designs alike"
NAMED = 3  # differing settings named at most (epochs first)


@dataclass
class Against:
    """The rank agreement of two studies over their common designs, and each design's numbers in both."""

    studies: tuple[str, str]
    names: tuple[str, str]  # what tells the studies apart: "2-epoch" and "5-epoch"
    tau: float
    low: float
    high: float
    how: ranking.Resampling
    table: pd.DataFrame  # variant, then mean_, rank_, delta_ (to the baseline), baseline_ of A (this study) and B
    only: tuple[list[str], list[str]]
    unit: str  # "acc %" or "metric"

    def verdict(self) -> str:
        """One line: ``the 2-epoch ranking (a) agrees with the 5-epoch ranking (b): tau 0.87 [0.60, 1.00]``."""
        a, b = (f"{name} ranking ({study})" if name else f"{study} ranking"
                for name, study in zip(self.names, self.studies))
        if math.isnan(self.tau):
            return (f"the {a} cannot be compared with the {b}: {len(self.table)} design(s) in common"
                    + (", tied in one study" if len(self.table) > 1 else ""))
        verb = "agrees with" if self.low > 0 else "reverses" if self.high < 0 else "is not shown to agree with"
        return f"the {a} {verb} the {b}: tau {self.tau:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def note(self, baseline_label: str) -> str:
        """What the numbers mean, and the designs left out."""
        (a, b), (only_a, only_b) = self.studies, self.only
        left = [f"only in {s}: {', '.join(map(short_variant, d))}" for s, d in ((a, only_a), (b, only_b)) if d]
        if len(self.table) < 2:
            return f"A: {a}, B: {b}. A ranking needs 2 designs in both." + (f" ({'; '.join(left)})" if left else "")
        text = (f"A: {a}, B: {b}. tau: Kendall's tau-b between the {len(self.table)} common designs' final means "
                f"in the two studies (1: the same order, 0: unrelated, -1: reversed); {self.how.describe()}. 'agrees' "
                f"when the interval's lower bound is above 0, 'reverses' when its upper bound is below 0. Δ: mean "
                f"per-seed difference to the baseline {baseline_label} in each study.")
        return text + (f" Left out ({'; '.join(left)})." if left else "")

    def shown(self) -> pd.DataFrame:
        """The table as text: design, then each study's mean, rank and Δ (A: this study, B: the other)."""
        t, out = self.table, pd.DataFrame({"design": [short_variant(v) for v in self.table["variant"]]})
        for side in "AB":
            out[f"{self.unit} {side}"] = ["-" if math.isnan(v) else f"{v:.2f}" for v in t[f"mean_{side}"]]
            out[f"rank {side}"] = t[f"rank_{side}"].astype(int).astype(str)
            out[f"Δ {side}"] = ["baseline" if b else "-" if math.isnan(v) else f"{v:+.2f}"
                                for v, b in zip(t[f"delta_{side}"], t[f"baseline_{side}"])]
        return out


def against(a: StudyRuns, b: StudyRuns, columns: tuple[str, str], baselines: tuple[dict, dict],
            scale: float = 1.0, unit: str = "metric") -> Against:
    """Compare ``a`` and ``b`` over the designs (variants) both completed, each on its objective column."""
    runs = (a, b)
    tables = [ablation_stats(r.kept, ["variant"], c, baseline=s, direction=r.direction, scale=scale)
              .set_index("variant") for r, c, s in zip(runs, columns, baselines)]
    present = [set(t.index[t["n"] > 0]) for t in tables]
    common = sorted(present[0] & present[1])
    scores = pd.concat({i: _scores(r, c) for i, (r, c) in enumerate(zip(runs, columns))}, axis=1)
    scores = scores[scores.index.get_level_values(0).isin(common)]
    how = ranking.resampling(scores)
    values = ranking.cube(scores.stack(), common, how.seeds, [0, 1])
    means = ranking.point_means(values)
    tau, low, high = math.nan, math.nan, math.nan
    if len(common) >= 2:
        tau = ranking.kendall(means[:, 0], means[:, 1])
        boot = ranking.bootstrap_means(values, how)
        low, high = (float(v) for v in ranking.interval(ranking.tau_b(boot[..., 0], boot[..., 1])))
    only = (sorted(present[0] - present[1]), sorted(present[1] - present[0]))
    return Against((a.study, b.study), schedule_names(a.settings, b.settings), tau, low, high, how,
                   _table(common, tables, means), only, unit)


def _table(common: list[str], tables: list[pd.DataFrame], means: np.ndarray) -> pd.DataFrame:
    """Each common design's mean, rank (1: best) and difference to the baseline in A and in B, by rank in A."""
    table = pd.DataFrame({"variant": common})
    for i, (side, t) in enumerate(zip("AB", tables)):
        table[f"mean_{side}"] = t.loc[common, "mean"].to_numpy(float)
        table[f"rank_{side}"] = stats.rankdata(-means[:, i], method="min").astype(int)
        table[f"delta_{side}"] = t.loc[common, "delta"].to_numpy(float)
        table[f"baseline_{side}"] = t.loc[common, "is_baseline"].to_numpy(bool)
    return table.sort_values(["rank_A", "variant"], kind="stable").reset_index(drop=True)


def _scores(runs: StudyRuns, column: str) -> pd.Series:
    """Each (variant, seed)'s mean objective over its completed trials, higher is better."""
    done = runs.kept[(runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()]
    sign = -1.0 if runs.direction == "minimize" else 1.0
    return sign * done.groupby(["variant", "seed"])[column].mean()


def schedule_names(a: dict, b: dict) -> tuple[str, str]:
    """What tells two studies' settings apart, as names: ``("2-epoch", "5-epoch")``, ``("dataset=digits", ...)``;
    up to 3 differing settings, epochs first; empty names when none differs."""
    differ = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=lambda k: (k != "epochs", k))
    if not differ:
        return "", ""
    more = ", ..." if len(differ) > NAMED else ""
    return tuple(", ".join(_setting(k, s.get(k, "-")) for k in differ[:NAMED]) + more for s in (a, b))


def _setting(key: str, value) -> str:
    return f"{value}-epoch" if key == "epochs" else f"{key}={value}"
