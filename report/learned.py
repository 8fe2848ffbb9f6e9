"""What each design's activation sites learned, read from its trials' ``activations/*.csv``.

``collect_sites`` gathers the tables a trial records after training (``ablation.site_stats``);
``activation_table`` aggregates them per design (over sites by stage, then over seeds); the plots
draw beta and the linear fraction by depth, beta's spread across inputs by depth, and the learned
curves ``y = f(x)`` at the first, middle and last site, as the paper draws them (ACON's, and the pointwise
rivals' PAU, SMU, SMU-1 and APA rebuilt from their parameters).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from report.collect import StudyRuns
from report.plots import save
from report.tables import short_variant
from studies.tracking import schema

#: Generators whose beta does not depend on the input: no spread across inputs to draw.
_STATIC = ("-", "learned", "fixed")
MAX_CURVES = 16  # channels drawn per site
#: Where a column's values can lie: a std band is cut there (the linear fraction is a fraction, a spread a std).
_RANGE = {"linear_fraction": (0.0, 1.0), "beta_std_samples": (0.0, None)}


def collect_sites(runs: StudyRuns) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sites, channels) of the kept completed trials, each row with its trial's run_id, variant and seed.

    A trial without the tables (recorded with ``act_images=0``, or before they existed) is left out.
    """
    client = MlflowClient(tracking_uri=runs.tracking_uri)
    done = runs.kept[runs.kept["state"] == "COMPLETE"]
    sites, channels = [], []
    with tempfile.TemporaryDirectory() as tmp, _no_download_bars():
        for trial in done.itertuples(index=False):
            ident = {"run_id": trial.run_id, "variant": trial.variant, "seed": trial.seed,
                     "gate": getattr(trial, "gate", "-")}
            for name, out in ((schema.SITES_FILE, sites), (schema.CHANNELS_FILE, channels)):
                frame = _read(client, trial.run_id, f"{schema.activations_dir()}/{name}", Path(tmp))
                if frame is not None:
                    out.append(frame.assign(**ident))
    return (pd.concat(sites, ignore_index=True) if sites else pd.DataFrame(),
            pd.concat(channels, ignore_index=True) if channels else pd.DataFrame())


@contextmanager
def _no_download_bars():
    """MLflow draws a progress bar per artifact download on stderr: two per trial would bury the report."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _read(client: MlflowClient, run_id: str, artifact: str, tmp: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(client.download_artifacts(run_id, artifact, str(tmp / run_id)))
    except (MlflowException, OSError):
        return None


def _acon(sites: pd.DataFrame) -> pd.DataFrame:
    return sites[sites["beta_mean"].notna()] if not sites.empty else sites


def activation_table(sites: pd.DataFrame) -> pd.DataFrame:
    """Per ACON design: seeds, sites, beta mean, beta's spread across inputs, linear fraction (overall and per
    seed), then ``stage k`` as ``beta / linear`` (site means per seed, then the mean over seeds)."""
    acon = _acon(sites)
    if acon.empty:
        return pd.DataFrame()
    per_seed = acon.groupby(["variant", "seed"]).agg(beta=("beta_mean", "mean"), spread=("beta_std_samples", "mean"),
                                                     linear=("linear_fraction", "mean"), sites=("site", "size"))
    stages = acon.groupby(["variant", "seed", "stage"])[["beta_mean", "linear_fraction"]].mean()
    rows = []
    for variant, g in per_seed.groupby(level="variant", sort=True):
        row = {"design": short_variant(variant), "n": len(g), "β": f"{g['beta'].mean():.2f}",
               "spread": f"{g['spread'].mean():.3f}", "linear": f"{g['linear'].mean():.2f}",
               "by seed": _by_seed(g["linear"])}
        by_stage = stages.loc[variant].groupby(level="stage").mean()
        for stage, values in by_stage.iterrows():
            row[f"stage {stage}"] = f"{values['beta_mean']:.2f}/{values['linear_fraction']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def _by_seed(values) -> str:
    """Each seed's value, in seed order; with more than four seeds their range (the column stays narrow)."""
    values = list(values)
    if len(values) > 4:
        return f"{min(values):.2f}..{max(values):.2f}"
    return " ".join(f"{v:.2f}" for v in values)


LEGEND = ("n: seeds; β: mean switching factor over the ACON sites; spread: β's standard deviation across inputs "
          "at each channel and position, averaged over channels and positions, then over sites (0 when beta does "
          "not depend on the input, as in ACON-C); linear: the linear fraction, mean of "
          "1 - |2 σ(β (p1 - p2) x) - 1| over the inputs a site sees (1: the site computes (p1 + p2) x / 2, "
          "not activated; 0: max(p1 x, p2 x), activated); by seed: linear per seed, in seed order (more than four seeds: lowest..highest); stage k: "
          "β/linear of the sites in that stage. Designs without ACON sites (ReLU, Swish) have input statistics "
          "only (activations/sites.csv of their runs).")


def plot_activations(sites: pd.DataFrame, channels: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Beta and linear fraction by depth, beta's spread across inputs by depth, and the learned curves (ACON's
    and the pointwise rivals')."""
    acon, paths = _acon(sites), []
    if not acon.empty:
        colors = {v: f"C{i % 10}" for i, v in enumerate(sorted(acon["variant"].unique()))}  # one colour per design
        paths = _by_depth(acon, [("beta_mean", "β (mean over inputs)"), ("linear_fraction", "linear fraction")],
                          "what each site learned, by depth", out_dir, "act_beta_by_depth", colors)
        dynamic = acon[~acon["generator"].astype(str).isin(_STATIC)]
        if not dynamic.empty:
            paths += _by_depth(dynamic, [("beta_std_samples", "spread of β across inputs (std)")],
                               "meta-ACON: how much β depends on the input", out_dir, "act_beta_spread_by_depth",
                               colors)
    if (not acon.empty and not channels.empty) or not _pointwise(sites).empty:
        paths += plot_curves(sites, channels, out_dir)
    return paths


def _pointwise(sites: pd.DataFrame) -> pd.DataFrame:
    """The rows of pointwise rivals (PAU, SMU, SMU-1, APA): their learned parameters rebuild the curve."""
    if "curve_params" not in sites:
        return sites.iloc[:0]
    return sites[sites["curve_params"].notna() & sites["activation"].astype(str).isin(_pointwise_names())]


def _by_depth(acon: pd.DataFrame, panels: list[tuple[str, str]], title: str, out_dir: Path, stem: str,
              colors: dict[str, str]) -> list[Path]:
    """One panel per column, by site index: per design its mean over seeds (bold), each seed (thin, so a seed
    that went its own way stays in sight) and a band of mean ± std over seeds (0 for one seed), cut to the
    column's range."""
    fig = Figure(figsize=(6.5 * len(panels), 4))
    for i, (column, label) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        for variant, g in acon.groupby("variant", sort=True):
            by_site, color = g.groupby("site")[column], colors[variant]
            mean = by_site.mean()
            ax.plot(mean.index, mean.values, marker="o", ms=3, lw=2, color=color,
                    label=f"{variant} (seeds={g['seed'].nunique()})")
            std = by_site.std().fillna(0.0)  # over seeds, as the learning curves (report.plots)
            low, high = _RANGE.get(column, (None, None))
            ax.fill_between(mean.index, (mean - std).clip(low, high), (mean + std).clip(low, high), color=color,
                            alpha=0.15)
            for _, one in g.groupby("seed"):
                ax.plot(one["site"], one[column], lw=0.7, alpha=0.5, color=color)
        _stage_ticks(ax, acon)
        ax.set(xlabel="site (depth order; stage in brackets)", ylabel=label)
        if column == "linear_fraction":
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}\nmean over seeds (bold), each seed (thin), band: mean ± std over seeds")
    return save(fig, out_dir, stem)


def _stage_ticks(ax, acon: pd.DataFrame) -> None:
    stage = acon.groupby("site")["stage"].first()
    ax.set_xticks(stage.index, [f"{s}\n[{st}]" for s, st in stage.items()], fontsize=7)


def plot_curves(sites: pd.DataFrame, channels: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The learned ``y = f(x)`` of each design (first seed) at its first, middle and last ACON or pointwise-rival
    site, the x range three input standard deviations each way: ACON one thin line per channel (beta at its mean
    over inputs), PAU, SMU, SMU-1 and APA one line per site (one function per layer), rebuilt from its
    ``curve_params``. DY-ReLU and FReLU compute a different function for each input: named in the title, not drawn."""
    acon = _acon(sites) if not channels.empty else sites.iloc[:0]
    drawn = pd.concat([acon, _pointwise(sites)])
    designs = sorted(drawn["variant"].unique())
    fig = Figure(figsize=(11, 2.8 * max(len(designs), 1)))
    for row, variant in enumerate(designs):
        g = drawn[drawn["variant"] == variant]
        run = g.sort_values("seed")["run_id"].iloc[0]
        mine = g[g["run_id"] == run].sort_values("site")
        picks = mine.iloc[sorted({0, len(mine) // 2, len(mine) - 1})]
        for col, site in enumerate(picks.itertuples(index=False)):
            ax = fig.add_subplot(len(designs), 3, 3 * row + col + 1)
            if str(site.activation) in _pointwise_names():
                _rival_curve(ax, site)
            else:
                ch = channels[(channels["run_id"] == run) & (channels["site"] == site.site)].head(MAX_CURVES)
                _curves(ax, ch, site, "hard_sigmoid" if str(getattr(site, "gate", "")) == "hard_sigmoid" else "sigmoid")
            ax.set_title(f"{variant}\nsite {site.site} ({site.path}, stage {site.stage})", fontsize=8)
    fig.suptitle("learned activations y = f(x): ACON per channel, PAU/SMU/APA per site (grey dashes: ReLU)"
                 + _input_dependent(sites), y=1.0)
    fig.tight_layout()
    return save(fig, out_dir, "act_curves")


def _input_dependent(sites: pd.DataFrame) -> str:
    """A caption line naming the designs whose function depends on the input (DY-ReLU, FReLU): not drawn."""
    activation = sites.get("activation", pd.Series(dtype=str)).astype(str)
    names = sorted(set(sites.loc[activation.str.match(r"dy_relu_|frelu$"), "variant"].astype(str)))
    if not names:
        return ""
    return (f"\nnot drawn: {', '.join(names)} (DY-ReLU / FReLU: a different function for each input; "
            "see piece*_share, branch_share in activations/sites.csv)")


def _pointwise_names() -> frozenset[str]:
    """The pointwise rivals' names. Imported here, not at the top: ``ablation`` brings torch and torchvision
    (seconds per start), which a report that draws no curve never needs."""
    from ablation.rival_stats import POINTWISE

    return frozenset(POINTWISE)


def _rival_curve(ax, site) -> None:
    from ablation.rival_stats import rival_curve

    scale = 3.0 * max(float(site.x_std), 1e-3)
    x = np.linspace(-scale, scale, 201)
    ax.plot(x, rival_curve(str(site.activation), str(site.curve_params), x), lw=1.2, color="C0")
    _axes(ax, x)


def _curves(ax, ch: pd.DataFrame, site, gate: str) -> None:
    scale = 3.0 * max(float(site.x_std), 1e-3)
    x = np.linspace(-scale, scale, 201)
    for c in ch.itertuples(index=False):
        d = (c.p1 - c.p2) * x
        z = c.beta_mean * d
        g = np.clip(z / 6 + 0.5, 0, 1) if gate == "hard_sigmoid" else 1 / (1 + np.exp(-z))
        ax.plot(x, d * g + c.p2 * x, lw=0.8, alpha=0.7)
    _axes(ax, x)


def _axes(ax, x: np.ndarray) -> None:
    """ReLU in grey dashes and the axes through the origin, behind every learned curve."""
    ax.plot(x, np.maximum(x, 0), "--", color="0.5", lw=1)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    ax.tick_params(labelsize=7)
