"""What to run next: the seeds the undecided comparisons need, as a ``run_study.py run`` command.

A rerun with more seeds only adds the missing cells: ``Study.cells`` enumerates seeds as
``range(seeds)``, and the runner queues only cells without a finished trial.
"""
from __future__ import annotations

import math

import pandas as pd

from report.inference import MIN_PAIRS_T
from report.power import MAX_SEEDS
from report.rows import CONTROL, acon_rows, best_row, label


def _planned(table: pd.DataFrame, direction: str, effect: float | None, mask: pd.Series | None = None) -> pd.DataFrame:
    """Rows a rerun plans for: with ``effect`` every tested row (within ``mask``); without, the best one if undecided."""
    tested = table["p_t"].notna() & (True if mask is None else mask)
    if effect is not None:
        return table[tested]
    best = best_row(table, direction, mask)
    if best is None or not tested[best.name] or not str(best["verdict"]).startswith(("noise", "tied (")):
        return table.iloc[:0]
    return table.loc[[best.name]]


def seeds_to_run(table: pd.DataFrame, direction: str = "maximize", effect: float | None = None,
                 control: pd.DataFrame | None = None) -> tuple[float, pd.Series | None, str]:
    """Seeds to run next and the comparison that needs the most: ``(seeds, row, against)``.

    Planned comparisons: with ``effect``, every row against the baseline and every ACON row against
    the control; without, the best design against the baseline and the best ACON design against the
    control, each only while undecided ("noise"), for its observed difference. Comparisons that need
    more than ``MAX_SEEDS`` count only when no other is reachable (then ``seeds`` is inf); ``seeds``
    is 0 when the differences have no spread to plan with; ``(nan, None, "")`` when nothing is left.
    """
    plans = _plans(table, direction, effect, control)
    if not plans:
        return math.nan, None, ""
    reachable = [plan for plan in plans if not math.isinf(plan[0])] or plans
    return max(reachable, key=lambda plan: plan[0])


def _plans(table: pd.DataFrame, direction: str, effect: float | None,
           control: pd.DataFrame | None) -> list[tuple[float, pd.Series, str]]:
    """``(seeds needed, row, against)`` for every planned comparison (see ``seeds_to_run``)."""
    plans = [(row, "the baseline") for _, row in _planned(table, direction, effect).iterrows()]
    if control is not None and control["is_baseline"].any():
        rows = _planned(control, direction, effect, acon_rows(control))
        plans += [(row, CONTROL["activation"]) for _, row in rows.iterrows()]
    return [(_needed(row), row, against) for row, against in plans]


def _needed(row: pd.Series) -> float:
    """Seeds the row needs (inf beyond ``MAX_SEEDS``; 0 when its differences have no spread)."""
    if not row["sd_diff"] > 0:
        return 0.0
    return math.inf if math.isnan(row["seeds_needed"]) else float(row["seeds_needed"])


def rerun_flags(study: str, preset: str, recorded: dict) -> str:
    """The flags that give again the recorded settings that change results where they differ from the preset's
    (a rerun with other values is refused), e.g. `` --epochs 2``; "" when the study cannot be loaded by name."""
    from studies.settings import FIELDS, flag
    from studies.catalog import load_study

    try:
        defaults = load_study(study).settings(preset or "quick", {})
    except (LookupError, ValueError, OSError):  # a user's study file is not found by its name: no flags
        return ""
    out = []
    for f in FIELDS:
        got = recorded.get(f.name)
        if not f.metadata["results"] or got in (None, "-") or got == str(defaults[f.name]):
            continue
        if f.metadata["kind"] is bool:
            out.append(flag(f) if got == "True" else "--no-" + flag(f)[2:])
        else:
            out += [flag(f), got]
    return "".join(f" {a}" for a in out)


def next_run_line(table: pd.DataFrame, *, study: str, group_by: list[str], seeds: int, direction: str = "maximize",
                  effect: float | None = None, preset: str = "", accuracy: bool = True,
                  control: pd.DataFrame | None = None, flags: str = "") -> str:
    """The command to run next (``python run_study.py run STUDY --seeds N``) and why; a rerun adds only new seeds.

    ``flags`` (from ``rerun_flags``) repeat the settings the study ran with, so the rerun resumes it."""
    unit = " points" if accuracy else ""
    flags = (f" --preset {preset}" if preset and preset != "quick" else "") + flags
    command = f"`python run_study.py run {study} --seeds {{n}}{flags}`"
    if not table["is_baseline"].any():
        return ""  # nothing is compared, so there is no difference to plan seeds for
    if int(table["n_pairs"].max() or 0) < 2:
        n = max(MIN_PAIRS_T, seeds + 1)
        return f"Next: {command.format(n=n)} to estimate the seed-to-seed noise (no row has 2 paired seeds yet)."
    n, row, against = seeds_to_run(table, direction, effect, control)
    if row is None:
        return ("Next: no rerun needed: the best design's comparisons are decided at the current seeds "
                "(name a smaller effect to plan for it).")
    name = f"{label(row, group_by)} vs {against}"
    if n == 0:
        n = max(MIN_PAIRS_T, seeds + 1)
        return f"Next: {command.format(n=n)}: the per-seed differences of {name} are all equal; more seeds show their spread."
    what = f"a difference of {row['effect']:.2f}{unit} ({name})"
    if math.isinf(n):
        return (f"Next: more seeds will not settle it: detecting {what} needs more than {MAX_SEEDS} seeds "
                f"(sd of the per-seed differences {row['sd_diff']:.2f}{unit}).")
    out_of_reach = [f"{label(r, group_by)} vs {a}" for need, r, a in _plans(table, direction, effect, control)
                    if math.isinf(need)]
    beyond = f" Beyond {MAX_SEEDS} seeds: {', '.join(out_of_reach)}." if out_of_reach else ""
    if n <= seeds:
        return f"Next: no more seeds needed: {seeds} seeds already detect {what} with 80% power.{beyond}"
    return (f"Next: {command.format(n=int(n))}: {int(n)} seeds detect {what} with 80% power at alpha "
            f"{row['power_alpha']:.3g} (Holm's first step); the rerun adds only the missing seeds' cells"
            + (f" (a rough plan: the spread comes from {int(row['n_pairs'])} seeds)." if row["n_pairs"] < MIN_PAIRS_T else ".")
            + beyond)
