"""The report's conclusions in words: a summary paragraph built from the table, ending with what to run next.

Pure functions of the ablation table (``report.stats.ablation_stats``), so they are tested on
hand-made frames. "Best design" is the non-baseline row with the best mean; the control is
the parameter-matched gate ``se_control`` (``acon.gated``), compared with the best ACON design.
"""
from __future__ import annotations

import html
import math

import pandas as pd

from report.plan import next_run_line, rerun_flags
from report.rows import CONTROL, acon_rows, best_row, label


def summary_paragraph(table: pd.DataFrame, *, group_by: list[str], baseline_label: str, direction: str = "maximize",
                      accuracy: bool = True, control: pd.DataFrame | None = None, next_run: str = "") -> str:
    """One paragraph: best design, its gain and interval, its cost, the corrected verdict, the control, what next.

    ``control`` is the table of the same trials with the control as baseline (``control_table``).
    """
    unit = " points" if accuracy else ""
    best = best_row(table, direction)
    if best is None:
        parts = [f"No design could be compared with {baseline_label}: no other row has completed trials."]
    elif not table["is_baseline"].any():
        value = f"{best['mean']:.2f}% accuracy" if accuracy else f"mean {best['mean']:.4g}"
        parts = [f"Best design: {label(best, group_by)}, {value}; no baseline row ({baseline_label}) to compare it with."]
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
    raced = _raced(str(best["verdict"]))
    if raced:
        return raced
    if math.isnan(best["p_holm"]):
        return "It cannot be tested against the baseline (fewer than 2 paired seeds)."
    verdict = {"better": "it beats the baseline", "worse": "it is worse than the baseline"}.get(
        best["verdict"], "the difference is not significant and may be seed noise")
    text = f"After Holm correction over {m} comparison{'s' if m != 1 else ''}, {verdict} (p = {best['p_holm']:.3g})."
    if best["verdict"] == "noise" and not math.isnan(best["mde"]):
        text += (f" With {int(best['n_pairs'])} seeds only differences of {best['mde']:.2f}{unit} or more are "
                 f"detected with 80% power.")
    return text


def _raced(verdict: str) -> str:
    """A raced study's decision in words (its verdicts come from the race's answer, ``report.race_answer``), else ""."""
    if verdict.startswith(("better (race", "worse (race")):
        word, when = verdict.split(" (race, ")
        return (f"The race shows it {word} than the baseline ({when.rstrip(')')}; its claims hold at the race's "
                f"alpha whatever the rounds it stopped after: see the race below).")
    if verdict.startswith("tied ("):
        return f"The race did not tell it apart from the baseline within its seed budget ({verdict[6:-1]})."
    if verdict.startswith("dropped in"):
        return f"The race {verdict} (shown worse than its best), so no claim against the baseline is made."
    return ""


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


def conclusions(runs, table: pd.DataFrame, group_by: list[str], column: str, baseline_label: str, accuracy: bool,
                effect: float | None = None) -> tuple[str, str]:
    """The summary paragraph and the next-run line of a study's table (``runs``: a ``report.collect.StudyRuns``)."""
    scale = 100.0 if accuracy else 1.0
    control = control_table(runs.kept, group_by, column, direction=runs.direction, scale=scale)
    seeds = int(runs.kept["seed"].nunique())
    next_run = next_run_line(table, study=runs.study, group_by=group_by, seeds=seeds, direction=runs.direction,
                             effect=effect, preset=getattr(runs, "preset", ""), accuracy=accuracy, control=control,
                             flags=rerun_flags(runs.study, getattr(runs, "preset", ""), getattr(runs, "settings", {})))
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
