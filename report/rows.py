"""Rows of an ablation table by role: a design's label, the best design, the ACON rows, the control.

Shared by the summary paragraph (``report.summary``), the next-run plan (``report.plan``) and
the Pareto plot (``report.pareto``).
"""
from __future__ import annotations

import pandas as pd

ACON_ACTIVATIONS = ("acon_a", "acon_b", "acon_c", "meta_acon")
CONTROL = {"activation": "se_control"}
NOT_APPLICABLE = "-"


def label(row: pd.Series, group_by: list[str]) -> str:
    """A row's design as ``meta_acon/channel/8/all`` (axes that do not apply left out)."""
    return "/".join(str(row[g]) for g in group_by if str(row[g]) != NOT_APPLICABLE) or "(all)"


def best_row(table: pd.DataFrame, direction: str = "maximize", mask: pd.Series | None = None) -> pd.Series | None:
    """The non-baseline row (within ``mask``) with the best mean; None when there is none."""
    rows = table[~table["is_baseline"] & table["mean"].notna() & (True if mask is None else mask)]
    if rows.empty:
        return None
    return rows.loc[rows["mean"].idxmax() if direction == "maximize" else rows["mean"].idxmin()]


def acon_rows(table: pd.DataFrame) -> pd.Series:
    """Rows whose activation is an ACON variant (all False without an ``activation`` column)."""
    if "activation" not in table:
        return pd.Series(False, index=table.index)
    return table["activation"].astype(str).isin(ACON_ACTIVATIONS)
