"""Readable columns for the intervals, power, cost and Pareto flag, added beside the ablation table.

``add_columns(shown, table)`` takes the readable frame of ``report.tables.display_frame`` and the
numeric table it came from; rows with too few seeds for an interval show why ("n=2: too few seeds").
"""
from __future__ import annotations

import math

import pandas as pd

from report.inference import MIN_PAIRS_BOOTSTRAP, MIN_PAIRS_T, too_few

CI_COLUMN = "95% CI"


def add_columns(shown: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``shown`` plus Δ intervals (t, bootstrap), P(better), power, seeds needed, costs and the Pareto mark."""
    out = shown.copy()
    if CI_COLUMN in out:
        out[CI_COLUMN] = [note or text for text, note in zip(out[CI_COLUMN], table["ci_note"])]
    tested = table["n_pairs"] > 0
    out["Δ CI (t)"] = _intervals(table, "delta_t", MIN_PAIRS_T, tested)
    out["Δ CI (bootstrap)"] = _intervals(table, "delta_boot", MIN_PAIRS_BOOTSTRAP, tested)
    out["P(better)"] = [_proportion(p, lo, hi) for p, lo, hi in zip(table["p_improve"], table["p_improve_low"],
                                                                   table["p_improve_high"])]
    out["detectable Δ"] = [_number(v) for v in table["mde"]]
    out["seeds for Δ"] = [_seeds(v, e, sd) for v, e, sd in zip(table["seeds_needed"], table["effect"], table["sd_diff"])]
    for key, name in (("params_extra_pct", "params +%"), ("flops_extra_pct", "FLOPs +%"), ("time_extra_pct", "time +%")):
        if key in table and table[key].notna().any():
            out[name] = [_number(v, signed=True, digits=1) for v in table[key]]
    if "pareto" in table and table["flops_extra_pct"].notna().any():
        out["Pareto"] = ["*" if p else "" for p in table["pareto"]]
    return out


def _intervals(table: pd.DataFrame, prefix: str, minimum: int, tested: pd.Series) -> list[str]:
    """``"[+0.31, +0.95]"``, the too-few-seeds note, or "-" for rows not compared."""
    out = []
    for lo, hi, n, t in zip(table[f"{prefix}_low"], table[f"{prefix}_high"], table["n_pairs"], tested):
        if not t:
            out.append("-")
        elif math.isnan(lo):
            out.append(too_few(int(n), minimum))
        else:
            out.append(f"[{lo:+.2f}, {hi:+.2f}]")
    return out


def _proportion(p: float, lo: float, hi: float) -> str:
    """``"0.83 [0.44, 0.97]"``; without an interval the fraction alone."""
    if math.isnan(p):
        return "-"
    return f"{p:.2f}" if math.isnan(lo) else f"{p:.2f} [{lo:.2f}, {hi:.2f}]"


def _number(v: float, *, signed: bool = False, digits: int = 2) -> str:
    """A number with ``digits`` decimals (``+`` sign if ``signed``), "-" for NaN."""
    return "-" if math.isnan(v) else f"{v:{'+' if signed else ''}.{digits}f}"


def _seeds(needed: float, effect: float, sd: float) -> str:
    """``"34 (Δ=0.50)"``; ``">1000"`` when out of reach; "-" without a difference or a spread to plan with."""
    if not (sd > 0 and effect > 0):
        return "-"
    return f"{'>1000' if math.isnan(needed) else int(needed)} (Δ={effect:.2f})"

def legend(columns, *, baseline_label: str, accuracy: bool) -> str:
    """What each of ``columns`` (a readable table's) means, in the table's order: a table's legend names
    its own columns, and the terminal's compact table says where the others are."""
    m = MIN_PAIRS_T
    names = [str(c).split(" vs ")[0] for c in columns]  # "Δ vs activation=relu" is the Δ column
    spread = "mean ± standard deviation across seeds" + ("" if "best" in names else " (* best mean)")
    known = {
        "n": "n: completed trials",
        "dropped": "dropped: pruned or failed trials, left out",
        "pruned/failed": "pruned/failed: trials left out",
        "acc %": f"acc %: {spread}",
        "metric": f"metric: {spread}",
        "err %": "err %: 100 - accuracy",
        CI_COLUMN: "95% CI: t-interval of the mean" + (", clipped to 0-100" if accuracy else "")
                   + f" (needs {m} seeds)",
        "Δ": (f"Δ: mean per-seed difference to the baseline {baseline_label} (paired on the seeds both have)"
              if baseline_label != "baseline" else "Δ: difference to a baseline row (none here)"),
        "pairs": "pairs: seeds present in the row and the baseline",
        "p (t)": "p (t): paired t-test (exact sign test when every pair differs by the same amount)",
        "p (Holm)": "p (Holm): the paired t-test's p adjusted (Holm) for the number of rows tested against the "
                    "baseline",
        "p (W)": "p (W): Wilcoxon signed-rank (needs 6 pairs)",
        "verdict": "verdict: better or worse when p (Holm) < 0.05, else noise (n/a: not tested)",
        "best": "best: * marks the best mean",
        "Δ CI (t)": f"Δ CI (t) / (bootstrap): 95% intervals of the per-seed difference (bootstrap: paired, BCa, fixed "
                    f"seed, needs {MIN_PAIRS_BOOTSTRAP} pairs; t needs {m})",
        "P(better)": "P(better): share of seeds where the design beats the baseline, Wilson 95% interval",
        "detectable Δ": "detectable Δ: smallest difference the current seeds detect with 80% power; seeds for Δ: "
                        "seeds needed for the difference named (default: the observed one); both for a two-sided "
                        "paired t-test at alpha / m, Holm's strictest step (conservative)",
        "params +%": "params +% and FLOPs +%: over the ReLU model",
        "time +%": "time +%: time per training image over the baseline row",
        "Pareto": "Pareto: * when no other design is better on both accuracy and FLOPs",
    }
    text = "; ".join(known[c] for c in names if c in known) + "."
    if "p (Holm)" in names and "p (W)" not in names:  # the compact table: the full one is elsewhere
        text += (" More columns (p (t), p (W), intervals of Δ, P(better), power, costs, Pareto): --format markdown, "
                 "html or csv, or the parent run's description in the MLflow UI.")
    return text
