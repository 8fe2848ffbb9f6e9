"""Cost beside accuracy: per-design params, FLOPs and time overhead, and the accuracy-vs-FLOPs Pareto front.

Trials carry their design's overhead over the ReLU model (``params_extra_pct``, ``flops_extra_pct``):
as metrics, or as run params named ``cost.<name>`` (the collector may prefix params ``param.``).
``cost_value`` reads any of these. Time overhead is measured training throughput (``images_per_s``,
or ``time/images_per_s``) against the baseline row.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from report.plots import save
from report.rows import label
from studies.tracking import schema

COSTS = ("params_extra_pct", "flops_extra_pct", "flops")
THROUGHPUT = "images_per_s"


def cost_value(frame: pd.DataFrame, name: str) -> pd.Series:
    """The numeric values of cost ``name``: a metric ``name`` or a param ``cost.name`` (either maybe ``param.``-prefixed)."""
    for column in _columns(name):
        if column in frame and frame[column].notna().any():
            return pd.to_numeric(frame[column], errors="coerce")
    return pd.Series(math.nan, index=frame.index, dtype=float)


def _columns(name: str) -> tuple[str, ...]:
    """Where ``name`` may be logged: as is, as a per-design cost param, or under a section prefix."""
    stem = name.removeprefix(schema.COST)
    prefixed = (stem, schema.COST + stem, schema.EPOCH_METRICS.get(stem, stem))
    return prefixed + tuple(f"param.{c}" for c in prefixed)


def group_costs(done: pd.DataFrame) -> dict[str, float]:
    """Mean cost of one group's completed trials (every cost the same for a design; the mean ignores gaps)."""
    out = {name: float(cost_value(done, name).mean()) for name in COSTS}
    out[THROUGHPUT] = float(cost_value(done, THROUGHPUT).mean())
    return out


def time_extra_pct(throughput: pd.Series, baseline_throughput: float) -> pd.Series:
    """Extra time per image against the baseline, in %: ``100 * (baseline / variant - 1)``."""
    return 100.0 * (baseline_throughput / throughput - 1.0)


def pareto_front(accuracy: pd.Series, cost: pd.Series, direction: str = "maximize") -> pd.Series:
    """True on rows no other row dominates (at least as accurate and as cheap, better in one); NaN rows are never on it."""
    acc = accuracy.to_numpy(float) * (1.0 if direction == "maximize" else -1.0)
    c = cost.to_numpy(float)
    valid = ~(np.isnan(acc) | np.isnan(c))
    on_front = np.zeros(len(acc), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (acc >= acc[i]) & (c <= c[i]) & ((acc > acc[i]) | (c < c[i]))
        on_front[i] = not others.any()
    return pd.Series(on_front, index=accuracy.index)


def plot_pareto(table: pd.DataFrame, group_by: list[str], out_dir: Path, *, cost: str = "flops_extra_pct",
                ylabel: str = "accuracy (%)", stem: str = "pareto_flops") -> list[Path]:
    """Mean accuracy (with its 95% t-interval) against FLOPs overhead per design; the Pareto front joined by a line.

    Nothing is drawn (and ``[]`` returned) when no design has a cost to place it.
    """
    if not table["pareto"].any():
        return []
    labels = [label(row, group_by) for _, row in table.iterrows()]
    rows = table.assign(label=labels).dropna(subset=["mean", cost])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    yerr = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
    ax.errorbar(rows[cost], rows["mean"], yerr=np.nan_to_num(yerr), fmt="o", color="tab:gray", ecolor="0.8", capsize=3)
    front = rows[rows["pareto"]].sort_values(cost)
    ax.plot(front[cost], front["mean"], "o-", color="tab:red", label="Pareto front")
    for row in rows.itertuples():
        ax.annotate(row.label, (getattr(row, cost), row.mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
    xlabel = "FLOPs over the ReLU model (%)" if cost == "flops_extra_pct" else cost.replace("_", " ")
    ax.set(xlabel=xlabel, ylabel=ylabel, title="accuracy vs FLOPs overhead")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, out_dir, stem)
