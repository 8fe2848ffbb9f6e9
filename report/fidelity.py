"""Does a short schedule rank true: how each epoch's ranking of the designs agrees with the final epoch's.

Radosavovic et al. (2019) checked that 10-epoch results rank their design spaces as full schedules do before
trusting them; ``report STUDY --fidelity`` asks the same of a study's own epochs. A design's score at epoch k
is the mean over seeds of the objective's per-epoch value (completed trials only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from report import ranking
from report.collect import StudyRuns, history
from report.errors import ReportError
from report.plots import save
from report.tables import short_variant

LEADS = 0.95  # the share of draws in which the final best must lead
HEADING = "Does the short schedule rank true (fidelity by epoch)"


@dataclass
class Fidelity:
    """Each epoch's rank agreement with the final epoch, when the final best starts to lead, and late crossings."""

    key: str
    designs: list[str]
    epochs: list[int]
    means: np.ndarray  # (designs, epochs) mean over seeds, higher is better (a minimised metric negated)
    table: pd.DataFrame  # epoch, tau, tau_low, tau_high, lead (share of draws the final best leads), leader
    best: str
    lead_epoch: int | None  # from this epoch on the final best leads at every later one (in >= 95% of draws)
    crossings: list[tuple[str, str, int]] = field(default_factory=list)  # pairs ordered unlike the end, late
    how: ranking.Resampling | None = None

    def summary(self) -> str:
        """What the table says, in a few sentences: the method, where the best starts to lead, late crossings."""
        last = self.epochs[-1]
        head = (f"Kendall's tau between the designs' ranking at each epoch and at the final epoch {last} "
                f"({len(self.designs)} designs by the mean over seeds of {self.key}; 1: the same order, 0: unrelated, "
                f"-1: reversed); {self.how.describe()}.")
        return " ".join([head, self.lead_text(), self.crossing_text()])

    def brief(self) -> str:
        """One line for the parent run: tau by epoch, where the best starts to lead, late crossings."""
        taus = ", ".join(_num(v) for v in self.table["tau"])
        return f"{self.key}: tau by epoch (1..{self.epochs[-1]}) {taus}. {self.lead_text()} {self.crossing_text()}"

    def lead_text(self) -> str:
        """From which epoch on the final best leads (in >= 95% of draws, or in the means alone for designs)."""
        best = short_variant(self.best)
        if self.how.unit == "designs":  # a draw of designs may leave the best out: no share of draws
            when = "never" if self.lead_epoch is None else f"from epoch {self.lead_epoch} on"
            return f"{best}, best at the end, has the best mean at every epoch {when} (no seeds to resample)."
        if self.lead_epoch is None:
            share = self.table["lead"].iloc[-1]
            return (f"{best}, best at the end, does not lead in {LEADS:.0%} of draws through to the end "
                    f"(at the final epoch: {share:.0%}): the seeds do not settle the best design.")
        return (f"{best}, best at the end, leads in at least {LEADS:.0%} of draws at every epoch "
                f"from {self.lead_epoch} on.")

    def crossing_text(self) -> str:
        """The designs whose order at some epoch after the schedule's half differs from the final order."""
        half = self.epochs[-1] // 2
        if not self.crossings:
            return f"No two designs change order after epoch {half} of {self.epochs[-1]}."
        pairs = ", ".join(f"{short_variant(a)} and {short_variant(b)} (until epoch {k})" for a, b, k in self.crossings)
        return f"Late crossings (ordered unlike the end after epoch {half} of {self.epochs[-1]}): {pairs}."

    def shown(self) -> pd.DataFrame:
        """The table as text: epoch, tau, its interval, the share of draws the final best leads, the leader."""
        t = self.table
        return pd.DataFrame({
            "epoch": t["epoch"].astype(str),
            "tau": [_num(v) for v in t["tau"]],
            "95% CI": ["-" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"
                       for lo, hi in zip(t["tau_low"], t["tau_high"])],
            f"{short_variant(self.best)} leads": [_share(v) for v in t["lead"]],
            "leader": [short_variant(d) for d in t["leader"]],
        })


def fidelity(runs: StudyRuns, key: str) -> Fidelity:
    """The fidelity of ``runs``'s per-epoch metric ``key`` (e.g. ``val/acc``), scored in the study's direction."""
    hist = history(runs, keys=(key,))
    done = hist[(hist["state"] == "COMPLETE") & (hist["step"] > 0)]
    if done.empty:
        raise ReportError(f"study {runs.study!r} has no per-epoch history of {key} in a completed trial: "
                          "nothing to rank by epoch (--fidelity needs the metric logged every epoch)")
    sign = -1.0 if runs.direction == "minimize" else 1.0
    return epoch_fidelity(done.assign(value=sign * done["value"]), key)


def epoch_fidelity(done: pd.DataFrame, key: str) -> Fidelity:
    """The fidelity from a long frame (run_id, variant, seed, step, value; higher is better)."""
    designs, epochs, scores, how = _scores(done)
    means = ranking.point_means(scores)  # (designs, epochs + the final column)
    boot = ranking.bootstrap_means(scores, how)
    taus = ranking.tau_b(boot[:, :, :-1].swapaxes(1, 2), boot[:, None, :, -1])
    low, high = ranking.interval(taus)
    best = int(np.nanargmax(means[:, -1]))
    seeds = how.unit == "seeds"  # a draw of designs may leave the best out: its lead is read from the means alone
    lead = _leads(boot if seeds else means[None], best)
    taus = [ranking.kendall(means[:, k], means[:, -1]) for k in range(len(epochs))]
    table = pd.DataFrame({"epoch": epochs, "tau": taus,
                          "tau_low": low, "tau_high": high, "lead": lead if seeds else np.nan,
                          "leader": [designs[i] for i in np.nanargmax(means[:, :-1], axis=0)]})
    first = _first_of_last_run(lead >= (LEADS if seeds else 1.0), epochs)
    return Fidelity(key, designs, epochs, means[:, :-1], table, designs[best], first,
                    late_crossings(means, designs, epochs), how)


def _scores(done: pd.DataFrame) -> tuple[list[str], list[int], np.ndarray, ranking.Resampling]:
    """Designs, epochs, the (designs, seeds, epochs + 1) scores (mean over a cell's trials; the last column each
    trial's last epoch: the final ranking, where a trial stopped early ends) and what to resample."""
    designs, epochs = sorted(done["variant"].unique()), sorted(int(s) for s in done["step"].unique())
    if len(designs) < 2:
        raise ReportError(f"--fidelity ranks designs: this study has {len(designs)} design with a completed trial")
    final = epochs[-1] + 1
    last = done.sort_values("step").groupby("run_id").tail(1).assign(step=final)
    values = pd.concat([done, last]).groupby(["variant", "seed", "step"])["value"].mean()
    how = ranking.resampling(values.xs(final, level=2).to_frame())
    return designs, epochs, ranking.cube(values, designs, how.seeds, [*epochs, final]), how


def _leads(boot: np.ndarray, best: int) -> np.ndarray:
    """Share of draws (draws, designs, epochs) in which design ``best`` is strictly ahead of every other, per epoch."""
    rival = np.fmax.reduce(np.delete(boot, best, axis=1), axis=1)  # the best other mean, a missing one left out
    return (boot[:, best] > rival)[:, :-1].mean(axis=0)


def _first_of_last_run(ahead: np.ndarray, epochs: list[int]) -> int | None:
    """The first epoch from which ``ahead`` holds at every later epoch (None: not at the last one)."""
    start = None
    for epoch, ok in zip(epochs, ahead):
        start = (start or epoch) if ok else None
    return start


def late_crossings(means: np.ndarray, designs: list[str], epochs: list[int]) -> list[tuple[str, str, int]]:
    """Pairs of designs whose order at some epoch after the schedule's half differs from their final order
    (``means``' last column), with the last such epoch; a tie counts as a different order."""
    half, out = epochs[-1] / 2, []
    for i in range(len(designs)):
        for j in range(i + 1, len(designs)):
            order = np.sign(means[i] - means[j])
            unlike = [e for e, o in zip(epochs, order[:-1]) if o != order[-1] and e > half and not np.isnan(o)]
            if unlike:
                pair = (designs[i], designs[j]) if order[-1] >= 0 else (designs[j], designs[i])
                out.append((*pair, unlike[-1]))
    return out


def ranks(fid: Fidelity) -> np.ndarray:
    """Each design's rank (1: best, ties share the best rank) at each epoch: (designs, epochs)."""
    return np.column_stack([stats.rankdata(-fid.means[:, k], method="min") for k in range(len(fid.epochs))])


def plot_ranks(fid: Fidelity, out_dir: Path) -> list[Path]:
    """Each design's rank by epoch (1 on top); designs that cross late are drawn bold."""
    late = {d for a, b, _ in fid.crossings for d in (a, b)}
    fig = Figure(figsize=(6, 0.8 + 0.35 * max(len(fid.designs), 6)))
    ax = fig.add_subplot()
    for i, (design, rank) in enumerate(zip(fid.designs, ranks(fid))):
        bold = design in late
        ax.plot(fid.epochs, rank, marker="o", ms=3, lw=2.5 if bold else 1.2, color=f"C{i % 10}",
                label=short_variant(design) + (" (crosses late)" if bold else ""))
    ax.axvspan(fid.epochs[-1] / 2, fid.epochs[-1], color="0.93", zorder=0, label="late: after half the epochs")
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="rank (1: best mean over seeds)", title=f"rank of each design by epoch ({fid.key})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, out_dir, "fidelity_ranks")


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"
