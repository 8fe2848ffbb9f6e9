"""The report's conclusions in words: a summary paragraph built from the table, and the command to run next.

Pure functions of the ablation table (``report.stats.ablation_stats``), so they are tested on
hand-made frames. "Best design" is the non-baseline row with the best mean; the control is
the parameter-matched gate ``se_control`` (``acon.gated``), compared with the best ACON design.
"""
from __future__ import annotations

import html
import math

import pandas as pd

from report.power import MAX_SEEDS
from report.inference import MIN_PAIRS_T

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


def summary_paragraph(table: pd.DataFrame, *, group_by: list[str], baseline_label: str, direction: str = "maximize",
                      accuracy: bool = True, control: pd.DataFrame | None = None, next_run: str = "") -> str:
    """One paragraph: best design, its gain and interval, its cost, the corrected verdict, the control, what next.

    ``control`` is the table of the same trials with the control as baseline (``control_table``).
    """
    unit = " points" if accuracy else ""
    best = best_row(table, direction)
    if best is None or not table["is_baseline"].any():
        parts = [f"No design could be compared with {baseline_label}: it or the other rows have no completed trials."]
    else:
        parts = [_gain(best, group_by, baseline_label, unit, accuracy), _cost(best), _decision(best, table, unit)]
        parts.append(_versus_control(table, control, group_by, direction, unit))
    parts.append(next_run)
    return " ".join(p for p in parts if p)


def _gain(best: pd.Series, group_by: list[str], baseline_label: str, unit: str, accuracy: bool) -> str:
    """"Best design: X, 98.1% accuracy, +0.62 points over relu (95% CI ...; better on 5 of 6 seeds)"."""
    value = f"{best['mean']:.2f}% accuracy" if accuracy else f"mean {best['mean']:.4g}"
    delta = f"{best['delta']:+.2f}{unit} over {baseline_label}" if not math.isnan(best["delta"]) else f"no seeds paired with {baseline_label}"
    return f"Best design: {label(best, group_by)}, {value}, {delta} ({_interval_text(best)}{_improve_text(best)})."


def _interval_text(row: pd.Series) -> str:
    """The bootstrap interval when there are enough seeds, else the t-interval, else why there is none."""
    if not math.isnan(row["delta_boot_low"]):
        return f"95% paired bootstrap CI [{row['delta_boot_low']:+.2f}, {row['delta_boot_high']:+.2f}]"
    if not math.isnan(row["delta_t_low"]):
        return f"95% t-interval [{row['delta_t_low']:+.2f}, {row['delta_t_high']:+.2f}]"
    return f"n={int(row['n_pairs'])}: too few seeds for an interval"


def _improve_text(row: pd.Series) -> str:
    """"; better on 5 of 6 seeds, P(improvement) 0.83 [0.44, 0.97]"."""
    n = int(row["n_pairs"])
    if not n or math.isnan(row["p_improve"]):
        return ""
    text = f"; better on {round(row['p_improve'] * n)} of {n} seeds"
    if not math.isnan(row["p_improve_low"]):
        text += f", P(improvement) {row['p_improve']:.2f} [{row['p_improve_low']:.2f}, {row['p_improve_high']:.2f}]"
    return text


def _cost(row: pd.Series) -> str:
    """"Cost: +3.1% params, +6.0% FLOPs, +25% time per image; on the accuracy-vs-FLOPs Pareto front"."""
    names = (("params_extra_pct", "params"), ("flops_extra_pct", "FLOPs"), ("time_extra_pct", "time per image"))
    items = [f"{row[k]:+.1f}% {name}" for k, name in names if k in row and not math.isnan(row[k])]
    if not items:
        return ""
    front = "on" if row.get("pareto", False) else "not on"
    return f"Cost: {', '.join(items)}; {front} the accuracy-vs-FLOPs Pareto front."


def _decision(best: pd.Series, table: pd.DataFrame, unit: str) -> str:
    """Whether the best design beats the baseline after Holm, and what the current seeds could have detected."""
    m = int(table["p_t"].notna().sum())
    if math.isnan(best["p_holm"]):
        return "It cannot be tested against the baseline (fewer than 2 paired seeds)."
    verdict = {"better": "it beats the baseline", "worse": "it is worse than the baseline"}.get(
        best["verdict"], "the difference is not significant and may be seed noise")
    text = f"After Holm correction over {m} comparison{'s' if m != 1 else ''}, {verdict} (p = {best['p_holm']:.3g})."
    if best["verdict"] == "noise" and not math.isnan(best["mde"]):
        text += (f" With {int(best['n_pairs'])} seeds only differences of {best['mde']:.2f}{unit} or more are "
                 f"detected with 80% power.")
    return text


def _versus_control(table: pd.DataFrame, control: pd.DataFrame | None, group_by: list[str], direction: str,
                    unit: str) -> str:
    """Whether the best ACON design beats the parameter-matched control, not only the plain baseline."""
    if control is None or not control["is_baseline"].any():
        return ""
    best = best_row(control, direction, acon_rows(control))
    if best is None:
        return ""
    name = label(best, group_by)
    if math.isnan(best["p_holm"]):
        return f"{name} cannot be tested against the parameter-matched control {CONTROL['activation']} (too few paired seeds)."
    if best["verdict"] == "better":
        return (f"It beats the parameter-matched control {CONTROL['activation']} too: {name} {best['delta']:+.2f}{unit} "
                f"(p (Holm) = {best['p_holm']:.3g}), so the gain is more than its extra parameters.")
    return (f"Against the parameter-matched control {CONTROL['activation']}, {name} is {best['delta']:+.2f}{unit} "
            f"(p (Holm) = {best['p_holm']:.3g}, {best['verdict']}): the gain may come from the extra parameters alone.")


def _planned(table: pd.DataFrame, direction: str, effect: float | None, mask: pd.Series | None = None) -> pd.DataFrame:
    """Rows a rerun plans for: with ``effect`` every tested row (within ``mask``); without, the best one if undecided."""
    tested = table["p_t"].notna() & (True if mask is None else mask)
    if effect is not None:
        return table[tested]
    best = best_row(table, direction, mask)
    if best is None or not tested[best.name] or best["verdict"] != "noise":
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


def next_run_line(table: pd.DataFrame, *, study: str, group_by: list[str], seeds: int, direction: str = "maximize",
                  effect: float | None = None, preset: str = "", accuracy: bool = True,
                  control: pd.DataFrame | None = None) -> str:
    """The command to run next (``python run_study.py run STUDY --seeds N``) and why; a rerun adds only new seeds."""
    unit = " points" if accuracy else ""
    flags = f" --preset {preset}" if preset and preset != "quick" else ""
    command = f"`python run_study.py run {study} --seeds {{n}}{flags}`"
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


def conclusions(runs, table: pd.DataFrame, group_by: list[str], column: str, baseline_label: str, accuracy: bool,
                effect: float | None = None) -> tuple[str, str]:
    """The summary paragraph and the next-run line of a study's table (``runs``: a ``report.collect.StudyRuns``)."""
    scale = 100.0 if accuracy else 1.0
    control = control_table(runs.kept, group_by, column, direction=runs.direction, scale=scale)
    seeds = int(runs.kept["seed"].nunique())
    next_run = next_run_line(table, study=runs.study, group_by=group_by, seeds=seeds, direction=runs.direction,
                             effect=effect, preset=getattr(runs, "preset", ""), accuracy=accuracy, control=control)
    paragraph = summary_paragraph(table, group_by=group_by, baseline_label=baseline_label, direction=runs.direction,
                                  accuracy=accuracy, control=control, next_run=next_run)
    return paragraph, next_run


def control_table(trials: pd.DataFrame, group_by: list[str], column: str, *, direction: str = "maximize",
                  scale: float = 1.0) -> pd.DataFrame | None:
    """The ablation table of ``trials`` with the parameter-matched control as baseline; None without control trials."""
    from report.stats import ablation_stats

    if "activation" not in group_by or not (trials["activation"].astype(str) == CONTROL["activation"]).any():
        return None
    return ablation_stats(trials, group_by, column, baseline=CONTROL, direction=direction, scale=scale)


def prepend_to_files(paths, paragraph: str) -> None:
    """Put the summary paragraph at the top of the Markdown and HTML tables among ``paths``."""
    for path in paths:
        if path.suffix == ".md":
            path.write_text(f"{paragraph}\n\n{path.read_text(encoding='utf-8')}", encoding="utf-8")
        elif path.suffix == ".html":
            text = html.escape(paragraph).replace("`", "")
            path.write_text(f"<p>{text}</p>\n{path.read_text(encoding='utf-8')}", encoding="utf-8")
