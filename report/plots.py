"""Plots of a study: error EDFs per design-axis value, learning curves, Optuna parameter importance.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state), so
they work headless and never touch a caller's backend. Each is saved as PNG and SVG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from studies.tracking.schema import SEED

EDF_BINS = 10


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return paths


def edf(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Empirical distribution function: sorted values and the weighted fraction at or below each."""
    order = np.argsort(values, kind="stable")
    w = np.ones(len(values)) if weights is None else np.asarray(weights, float)
    cum = np.cumsum(w[order])
    return np.asarray(values, float)[order], cum / cum[-1]


def complexity_weights(complexity: pd.Series, groups: pd.Series, bins: int = EDF_BINS) -> pd.Series:
    """Weights that give every group the same (uniform) distribution over log-complexity bins.

    Radosavovic et al. 2019: compare design spaces at equal complexity, not at whatever mix
    of model sizes each one happened to sample.
    """
    logc = np.log(complexity.astype(float).clip(lower=1.0))
    edges = np.histogram_bin_edges(logc, bins=bins)
    bin_of = pd.Series(np.clip(np.digitize(logc, edges[1:-1]), 0, bins - 1), index=complexity.index)
    per_bin = bin_of.groupby([groups, bin_of]).transform("size")
    bins_used = bin_of.groupby(groups).transform("nunique")
    return 1.0 / (per_bin * bins_used)


def plot_edf(trials: pd.DataFrame, axis: str, column: str, out_dir: Path, *, accuracy: bool = True,
             weight_by: str | None = None, stem: str | None = None) -> list[Path]:
    """EDF of the error of completed trials, one curve per value of ``axis`` (optionally complexity-normalised)."""
    done = trials[(trials["state"] == "COMPLETE") & trials[column].notna()]
    error = 100.0 * (1.0 - done[column]) if accuracy else done[column]
    weights = complexity_weights(done[weight_by], done[axis]) if weight_by else None
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for value, idx in done.groupby(curve_labels(done, axis), sort=True).groups.items():
        x, y = edf(error[idx].to_numpy(), None if weights is None else weights[idx].to_numpy())
        ax.step(np.r_[x[0], x], np.r_[0.0, y], where="post", label=f"{value} (n={len(idx)})")
    label = "error (%)" if accuracy else column
    ax.set(xlabel=label, ylabel="fraction of models with a lower " + ("error" if accuracy else "value"), ylim=(0, 1.02),
           title=f"EDF of {label} by {axis}" + (f", normalised by {weight_by}" if weight_by else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, out_dir, stem or f"edf_{axis}" + (f"_by_{_plain(weight_by)}" if weight_by else ""))


def curve_labels(trials: pd.DataFrame, axis: str) -> pd.Series:
    """``axis=value`` per trial; where the axis does not apply ("-"), the trial's activation instead.

    So ReLU, SiLU and ACON-C get a curve each instead of one lumped "generator=-" curve.
    """
    values = trials[axis].astype(str)
    own = axis + "=" + values
    other = trials["activation"].astype(str) if "activation" in trials else trials.get("variant", values)
    return own.where(values != "-", other)


def plot_learning_curves(hist: pd.DataFrame, key: str, out_dir: Path, *, scale: float = 1.0,
                         stem: str | None = None, max_variants: int = 12) -> list[Path]:
    """Mean of ``key`` per epoch for each variant, with a band of one std over seeds."""
    # Pruned runs stop early; mixing their short curves into the mean would bend it.
    rows = hist[(hist["key"] == key) & (hist["step"] > 0) & (hist["state"] == "COMPLETE")]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for variant, g in list(rows.groupby("variant", sort=True))[:max_variants]:
        by_step = (g["value"] * scale).groupby(g["step"])
        mean, std = by_step.mean(), by_step.std().fillna(0.0)
        line, = ax.plot(mean.index, mean.values, marker="o", ms=3, label=f"{variant} (seeds={g['seed'].nunique()})")
        ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=key + (" (%)" if scale == 100.0 else ""), title=f"{key}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, out_dir, stem or f"curves_{_plain(key)}")


def param_importances(study) -> dict[str, float]:
    """fANOVA importance of the params of ``study`` (an ``optuna.Study``), largest first, the same on every run.

    fANOVA, not Optuna 5's default PED-ANOVA: the question is how much of the objective's variance a
    design param explains, not what puts a trial in the top 10% (one or two trials in a small grid).
    A grid study's ``seed`` stays in: it is not a choice to make, but leaving it out makes the forest
    explain the seeds' spread with the design params (a param with no effect gets a share).
    """
    import optuna

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def importance_figure(importances: dict[str, float], title: str) -> Figure:
    """Horizontal bars, largest on top; the seed's bar is grey and named for what it is: noise."""
    names, values = list(importances)[::-1], list(importances.values())[::-1]
    fig = Figure(figsize=(5.5, 0.5 + 0.4 * max(len(names), 1)))
    ax = fig.add_subplot()
    labels = [f"{SEED} (noise)" if n == SEED else n for n in names]
    ax.barh(labels, values, color=["0.65" if n == SEED else "tab:blue" for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xlabel="importance (fANOVA, sums to 1)", title=title, xlim=(0, 1.1))
    return fig


def plot_param_importance(study, out_dir: Path, *, stem: str = "param_importance") -> list[Path]:
    """Bar chart of ``param_importances(study)``."""
    return save(importance_figure(param_importances(study), f"parameter importance: {study.study_name}"), out_dir, stem)


def _plain(key: str) -> str:
    """A metric or param key as a file-name part: ``val/acc`` -> ``val_acc``, ``cost.flops`` -> ``flops``."""
    return key.removeprefix("cost.").replace("/", "_")
