"""A raced study (``run --race``) in the report: its rounds, who was dropped and why, and its progress by seed.

The race is replayed from the trials with the plan its parent run records (``studies.race.procedure`` is a pure
function of the results) and the objective's exact values (logged unrounded), so the report shows exactly what
the runs decided.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from report.collect import StudyRuns
from report.plots import save
from report.tables import short_variant
from studies.race.procedure import RaceState, race
from studies.race.record import describe_answer, plan_from_tags


def race_of(runs: StudyRuns, column: str) -> RaceState | None:
    """The study's race replayed from its trials, or None for a study that was not raced."""
    plan, designs, baseline = plan_from_tags(runs.tags)
    if plan is None:
        return None
    rows = runs.kept[runs.kept["state"].isin(("COMPLETE", "PRUNED"))]
    done = {d: set(int(s) for s in g["seed"]) for d, g in rows.groupby("variant")}
    complete = rows[(rows["state"] == "COMPLETE") & rows[column].notna()]
    values = {d: {int(s): float(v) for s, v in zip(g["seed"], g[column])} for d, g in complete.groupby("variant")}
    return race(designs or sorted(done), done, values, plan, baseline)


def race_lines(state: RaceState) -> tuple[str, pd.DataFrame]:
    """A paragraph (what the race's error levels guarantee, where it stands, its answer) and a table of the
    rounds: seeds, designs run, the best, who was dropped, decided against the baseline, or stopped."""
    plan = state.plan
    status = f"finished: {state.reason}" if state.finished else f"in round {state.round} ({len(state.needed)} cell(s) to run)"
    designs = len(state.designs)
    head = (f"race: {plan.test} test after each round, each drop at {plan.level(designs):.2g}: {plan.promise()}; "
            f"seeds {plan.min_seeds}..{plan.max_seeds}; {status}; {len(state.wanted())} cells run or queued of a "
            f"{designs} x {plan.max_seeds} grid. Its answer{'' if state.finished else ' so far'}: "
            + ". ".join(describe_answer(state.answer(), short_variant)) + ".")
    rows = [{"round": r.number, "seeds": r.seeds, "designs": len(r.ran), "best": short_variant(r.best),
             "dropped (p vs the best)": ", ".join(f"{short_variant(d.design)} (p={d.p:.2g})" for d in r.dropped) or "-",
             "vs the baseline (p)": ", ".join(f"{short_variant(v.design)} {'better' if v.better else 'worse'} "
                                              f"(p={v.p:.2g})" for v in r.decided) or "-",
             "stopped": ", ".join(map(short_variant, r.stopped)) or "-"}
            for r in state.rounds]
    return head, pd.DataFrame(rows)


def race_verdicts(state: RaceState, kept: pd.DataFrame, table: pd.DataFrame, groups: list[str]) -> list[str]:
    """Each row's verdict from the race's answer, not from a test on the seeds the race chose to run: a row of
    one design says ``better (race, round k)``, ``worse (race, round k)``, ``dropped in round k`` (shown worse
    than the best, not told apart from the baseline), ``tied (settled in round k)`` or ``tied (undecided)``; a
    row grouping several designs (``--group-by``) keeps its own verdict and says how many were dropped."""
    members = {_key(k): set(g["variant"]) for k, g in kept.groupby(groups, sort=False, dropna=False)}
    out = []
    for key, verdict in zip(table[groups].itertuples(index=False, name=None), table["verdict"]):
        designs = members.get(_key(key), set())
        if len(designs) == 1 and verdict != "baseline":
            out.append(_verdict_of(state, next(iter(designs))))
            continue
        drops = [state.dropped[d] for d in sorted(designs) if d in state.dropped]
        rounds = sorted({d.round for d in drops})
        when = f"round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))}"
        if drops and len(drops) == len(designs):
            out.append(f"dropped in {when}")
        else:
            out.append(f"{verdict}; {len(drops)} of {len(designs)} designs dropped in {when}" if drops else verdict)
    return out


def _verdict_of(state: RaceState, design: str) -> str:
    """One design's verdict in the race's answer (``race_verdicts``)."""
    verdict = state.verdicts.get(design)
    if verdict is not None:
        return f"{'better' if verdict.better else 'worse'} (race, round {verdict.round})"
    if design in state.dropped:
        return f"dropped in round {state.dropped[design].round}"
    settled = state.settled_base.get(design)
    return f"tied (settled in round {settled.round})" if settled is not None else "tied (undecided)"


def _key(values) -> tuple[str, ...]:
    return tuple(map(str, values if isinstance(values, tuple) else (values,)))


def plot_race(runs: StudyRuns, state: RaceState, column: str, out_dir: Path, *, scale: float = 1.0) -> list[Path]:
    """Each design's running mean and 95% t-interval (from 3 seeds) of the objective by seed count, an x where it
    was dropped; the right panel zooms on the designs not dropped."""
    from scipy import stats

    done = runs.kept[(runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()]
    fig = Figure(figsize=(11, 4.5))
    panels = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    bounds = (0.0, 100.0) if scale == 100.0 else (-np.inf, np.inf)
    kept_range = [np.inf, -np.inf]
    for i, (variant, g) in enumerate(sorted(done.groupby("variant"), key=lambda kv: str(kv[0]))):
        values = (g.sort_values("seed")[column] * scale).to_numpy()
        n = np.arange(1, len(values) + 1)
        mean = np.cumsum(values) / n
        half = np.array([stats.t.ppf(0.975, k - 1) * np.std(values[:k], ddof=1) / np.sqrt(k) if k >= 3 else np.nan
                         for k in n])
        low, high = np.clip(mean - half, *bounds), np.clip(mean + half, *bounds)
        drop = state.dropped.get(variant)
        for ax in panels if drop is None else panels[:1]:
            color = f"C{i % 10}"
            ax.plot(n, mean, marker="o", ms=3, color=color, label=short_variant(variant))
            ax.fill_between(n, low, high, color=color, alpha=0.12)
            if drop is not None:
                ax.plot([drop.seeds], [mean[min(drop.seeds, len(mean)) - 1]], "x", ms=10, mew=2, color=color)
        if drop is None:
            kept_range = [min(kept_range[0], np.nanmin(np.r_[low[2:], mean])), max(kept_range[1], np.nanmax(np.r_[high[2:], mean]))]
    label = column + (" (%)" if scale == 100.0 else "")
    for ax, title in zip(panels, ("every design (x: dropped)", "the designs not dropped")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="seeds run", ylabel=label, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if np.isfinite(kept_range).all() and kept_range[1] > kept_range[0]:
        pad = 0.1 * (kept_range[1] - kept_range[0])
        panels[1].set_ylim(kept_range[0] - pad, kept_range[1] + pad)
    fig.suptitle("race: running mean and 95% t-interval (from 3 seeds) by seed count")
    return save(fig, out_dir, "race_progress")
