"""Ablation statistics: per-group mean, std, t-based 95% CI, and a seed-paired test against a baseline.

Only completed, non-duplicate trials enter the numbers; pruned, failed and running trials
are counted per row. The difference to the baseline is paired by seed (a paired t-test,
plus a Wilcoxon signed-rank test from 6 pairs on, the fewest for which its two-sided
exact p-value can go below 0.05), with its intervals and P(improvement) (``report.inference``),
what the seeds can detect and how many would (``report.power``), and the design's cost and
place on the accuracy-vs-FLOPs Pareto front (``report.pareto``).
"""
from __future__ import annotations

import difflib
import math

import numpy as np
import pandas as pd
from scipy import stats

from acon.registry import unknown_choice
from report import inference, pareto, power
from report.errors import MetricNotFoundError, ReportError
from studies.design_options import canonical
from studies.race.stats import p_paired
from studies.tracking.schema import OPTIONS

ALPHA = 0.05
WILCOXON_MIN_PAIRS = 6


def resolve_metric(trials: pd.DataFrame, metric: str) -> str:
    """The column holding ``metric``'s final value: ``final_<metric>`` if logged, else ``<metric>``."""
    for column in (f"final_{metric}", metric):
        if column in trials and trials[column].notna().any():
            return column
    logged = sorted(c for c in trials.columns if pd.api.types.is_float_dtype(trials[c]) and trials[c].notna().any())
    close = difflib.get_close_matches(metric, logged, n=1) or difflib.get_close_matches(f"final/{metric}", logged, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise MetricNotFoundError(f"no run logged metric {metric!r}{hint}; logged metrics: {', '.join(logged) or 'none'}")


def is_accuracy(metric: str, values: pd.Series) -> bool:
    """An accuracy-like metric (name says acc/top, values in 0..1): shown as accuracy and error in %."""
    named = any(k in metric for k in ("acc", "top"))
    v = values.dropna()
    return named and not v.empty and v.between(0.0, 1.0).all()


def parse_baseline(spec: str | dict | None, columns) -> dict[str, str]:
    """``"activation=relu"`` or ``"a=x,b=y"`` -> ``{"activation": "relu"}``; unknown axes raise ValueError."""
    if not spec:
        return {}
    pairs = spec.items() if isinstance(spec, dict) else _pairs(spec, columns)
    out = {k.strip(): str(v).strip() for k, v in pairs}
    unknown = sorted(k for k in out if k not in columns)
    if unknown:
        raise ReportError(unknown_choice("baseline axis", unknown[0], columns))
    if out.get(OPTIONS, "-") != "-":  # as the runs logged it: keys sorted ("kernel_size=5,bn=False" too)
        try:
            out[OPTIONS] = canonical(out[OPTIONS])
        except ValueError as exc:
            raise ReportError(f"baseline {OPTIONS}: {exc}") from exc
    return out


def _pairs(spec: str, columns) -> list[tuple[str, str]]:
    """``"a=x,b=y"`` -> pairs; the options axis keeps its own commas (``options=bn=False,kernel_size=5``)."""
    pairs: list[tuple[str, str]] = []
    for piece in spec.split(","):
        if pairs and pairs[-1][0].strip() == OPTIONS and piece.partition("=")[0].strip() not in columns:
            pairs[-1] = (OPTIONS, f"{pairs[-1][1]},{piece}")
        else:
            pairs.append(_split_pair(piece))
    return pairs


def _split_pair(text: str) -> tuple[str, str]:
    """``"axis=value"`` -> ``(axis, value)``."""
    if "=" not in text:
        raise ReportError(f"baseline must look like 'axis=value', got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def ablation_stats(trials: pd.DataFrame, group_by: list[str], column: str, *, baseline: dict[str, str],
                   direction: str = "maximize", scale: float = 1.0, effect: float | None = None,
                   bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """One row per group: counts by state, mean/std/CI of ``column`` (times ``scale``), the paired delta,
    its intervals, power and the seeds needed to detect ``effect`` (default: the observed delta), and costs.

    ``bounds`` is the range the metric cannot leave (accuracy in %: 0 to 100): a t-interval of a mean near
    a bound, from few noisy seeds, can reach past it, and is clipped to it (it only gains coverage)."""
    power.check_effect(effect)
    missing = sorted(g for g in group_by if g not in trials)
    if missing:
        raise ReportError(f"cannot group by {', '.join(missing)}; valid choices: {', '.join(sorted(map(str, trials.columns)))}")
    done = trials[(trials["state"] == "COMPLETE") & trials[column].notna()]
    base = _per_seed(done[_matches(done, baseline)], column, scale) if baseline else None
    groups = trials.groupby(group_by, sort=False, dropna=False)
    rows = [_row(dict(zip(group_by, key)), g, column, scale, base, baseline, direction) for key, g in groups]
    table = pd.DataFrame(rows)
    table = table.sort_values(group_by, key=_natural_key, kind="stable").reset_index(drop=True)
    if bounds is not None:
        table["ci_low"], table["ci_high"] = table["ci_low"].clip(*bounds), table["ci_high"].clip(*bounds)
    table["best"] = _best(table["mean"], direction)
    # several rows are tested against one baseline: the verdict uses Holm-adjusted p-values
    table["p_holm"] = holm(table["p_t"])
    table["verdict"] = [_verdict(d, p, b, direction) for d, p, b in zip(table["delta"], table["p_holm"], table["is_baseline"])]
    _add_power(table, effect)
    _add_cost(table, direction)
    return table


def power_alpha(table: pd.DataFrame) -> float:
    """The level the power columns use: alpha / m, the first (strictest) Holm step for m rows tested.

    Holm compares the smallest p with alpha / m and later ones with larger levels, so a row
    detectable at alpha / m is detectable whatever its rank: the conservative choice.
    """
    return ALPHA / max(1, int(table["p_t"].notna().sum()))


def _add_power(table: pd.DataFrame, effect: float | None) -> None:
    """Smallest difference the current pairs detect (80% power) and the seeds needed for ``effect``."""
    alpha = power_alpha(table)
    table["power_alpha"] = alpha
    table["effect"] = [abs(d) if effect is None else abs(float(effect)) for d in table["delta"]]
    table["mde"] = [power.detectable_difference(s, int(n), alpha) for s, n in zip(table["sd_diff"], table["n_pairs"])]
    table["seeds_needed"] = [power.seeds_needed(e, s, alpha) for e, s in zip(table["effect"], table["sd_diff"])]


def _add_cost(table: pd.DataFrame, direction: str) -> None:
    """Time overhead against the baseline row's throughput, and the accuracy-vs-FLOPs Pareto front."""
    base = table.loc[table["is_baseline"], pareto.THROUGHPUT]
    table["time_extra_pct"] = pareto.time_extra_pct(table[pareto.THROUGHPUT], base.iloc[0] if len(base) else math.nan)
    table["pareto"] = pareto.pareto_front(table["mean"], table["flops_extra_pct"], direction)


def holm(pvalues: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (family-wise error control); NaN entries are not tests."""
    tested = pvalues.dropna().sort_values(kind="stable")
    m = len(tested)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * tested.to_numpy(float)))
    out = pd.Series(np.nan, index=pvalues.index)
    out[tested.index] = adjusted
    return out


def _matches(frame: pd.DataFrame, spec: dict[str, str]) -> pd.Series:
    """Rows whose columns equal every ``axis=value`` in ``spec``."""
    mask = pd.Series(True, index=frame.index)
    for axis, value in spec.items():
        mask &= frame[axis].astype(str) == value
    return mask


def _per_seed(frame: pd.DataFrame, column: str, scale: float) -> pd.Series:
    """Mean of ``column`` per seed (one value per seed to pair on)."""
    return frame.groupby("seed")[column].mean() * scale


def _row(row: dict, group: pd.DataFrame, column: str, scale: float, base, baseline: dict, direction: str) -> dict:
    """Counts, summary and paired comparison of one group (``row`` starts with its axis values)."""
    states = group["state"].value_counts()
    done = group[(group["state"] == "COMPLETE") & group[column].notna()]
    values = done[column].to_numpy(float) * scale
    row.update(n=len(values), pruned=int(states.get("PRUNED", 0)), failed=int(states.get("FAIL", 0)),
               running=int(states.get("RUNNING", 0)))
    row.update(_summary(values))
    row.update(pareto.group_costs(done))
    row["is_baseline"] = bool(baseline) and len(group) > 0 and bool(_matches(group, baseline).all())
    # The baseline is not tested against itself: its delta is 0 by definition.
    row.update(_paired(_per_seed(done, column, scale), None if row["is_baseline"] else base, direction))
    return row


def _summary(values: np.ndarray) -> dict:
    """Mean, sample std and the 95% t-interval of ``values`` (none below 3 values: ``ci_note`` says why)."""
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    enough = n >= inference.MIN_PAIRS_T
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)) if enough else math.nan
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
            "ci_note": inference.too_few(n, inference.MIN_PAIRS_T) if n else ""}


def _paired(group: pd.Series, base: pd.Series | None, direction: str = "maximize") -> dict:
    """Mean per-seed difference to the baseline, its intervals and P(improvement), paired t and Wilcoxon p-values."""
    out = {"n_pairs": 0, "delta": math.nan, "sd_diff": math.nan, "delta_t_low": math.nan, "delta_t_high": math.nan,
           "delta_boot_low": math.nan, "delta_boot_high": math.nan, "p_improve": math.nan, "p_improve_low": math.nan,
           "p_improve_high": math.nan, "p_t": math.nan, "p_wilcoxon": math.nan}
    if base is None or base.empty:
        return out
    common = group.index.intersection(base.index)
    diffs = (group[common] - base[common]).to_numpy(float)
    out.update(n_pairs=len(diffs), delta=float(diffs.mean()) if len(diffs) else math.nan)
    out["delta_t_low"], out["delta_t_high"] = inference.t_interval(diffs)
    out["delta_boot_low"], out["delta_boot_high"] = inference.bootstrap_interval(group[common], base[common])
    out["p_improve"], out["p_improve_low"], out["p_improve_high"] = inference.prob_improvement(diffs, direction)
    if len(diffs) >= 2:
        out["sd_diff"] = float(diffs.std(ddof=1))
        out["p_t"] = p_paired(diffs)  # the race's contests with the baseline use the same test
    if len(diffs) >= WILCOXON_MIN_PAIRS and np.any(diffs != 0):
        out["p_wilcoxon"] = float(stats.wilcoxon(diffs).pvalue)
    return out


def _best(means: pd.Series, direction: str) -> pd.Series:
    """True on the row with the best mean (ties: the first)."""
    flag = pd.Series(False, index=means.index)
    if means.notna().any():
        flag[means.idxmax() if direction == "maximize" else means.idxmin()] = True
    return flag


def _verdict(delta: float, p: float, is_baseline: bool, direction: str) -> str:
    """"baseline", "better"/"worse" when the (Holm-adjusted) paired t-test says p < 0.05, else "noise"."""
    if is_baseline:
        return "baseline"
    if math.isnan(p):
        return "n/a"
    if p >= ALPHA:
        return "noise"
    return "better" if (delta > 0) == (direction == "maximize") else "worse"


def _natural_key(col: pd.Series) -> pd.Series:
    """Sort numbers as numbers ("4" < "16") and put the "-" placeholder first."""
    text = col.astype(str)
    num = pd.to_numeric(text, errors="coerce")
    return pd.Series(list(zip(text != "-", num.isna(), num.fillna(0), text)), index=col.index)
