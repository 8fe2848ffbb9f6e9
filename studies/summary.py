"""The table printed when a run ends: per design variant, n, mean and std of the metric.

It reads the Optuna study (what this run knows for sure); the full statistics with
confidence intervals and paired tests live in ``report``.
"""
from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState


def summary_frame(study) -> pd.DataFrame:
    """One row per variant: trials by state and the metric's n, mean, std over seeds."""
    rows = [{"variant": t.user_attrs.get("variant", "?"), "state": t.state.name,
             "value": t.value if t.state == TrialState.COMPLETE else None}
            for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("spurious")]
    if not rows:
        return pd.DataFrame(columns=["variant", "n", "mean", "std", "pruned", "failed"])
    df = pd.DataFrame(rows)
    grouped = df.groupby("variant", sort=False)
    out = pd.DataFrame({
        "n": grouped["value"].count(),
        "mean": grouped["value"].mean(),
        "std": grouped["value"].std(),
        "pruned": grouped["state"].apply(lambda s: int((s == "PRUNED").sum())),
        "failed": grouped["state"].apply(lambda s: int((s == "FAIL").sum())),
    })
    return out.reset_index()


def summary_text(result) -> str:
    """A short text: where the study lives, counts by state, and the per-variant table."""
    study = result.study
    table = summary_frame(study)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(result.counts.items()))
    text = table.to_markdown(index=False, floatfmt=".4f") if len(table) else "(no trials)"
    missing = f"; {result.missing} cell(s) not done yet: rerun the same command to retry them" if result.missing else ""
    return (f"study {study.study_name}: ran {result.ran} trial(s) now; {counts}{missing}\n"
            f"MLflow parent run {result.parent_run_id}\n{text}")
