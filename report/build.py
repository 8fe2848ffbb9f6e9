"""``build_report``: collect a study, tabulate it, write the files and log them to the parent run.

The four stages are plain calls: collect (report.collect) -> statistics (report.stats) ->
tables and plots (report.tables, report.plots) -> MLflow artifacts on the study's parent run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from report import plots
from report.collect import StudyRuns, collect, history
from report.errors import EmptyStudyError
from report.stats import ablation_stats, is_accuracy, parse_baseline, resolve_metric
from report.tables import check_formats, display_frame, format_table, write_tables
from studies import schema

ARTIFACT_DIR = "report"
DEFAULT_BASELINE = "activation=relu"


def build_report(study: str, *, tracking_uri: str | None = None, experiment: str | None = None, group_by=None,
                 baseline: str | dict | None = "activation=relu", metric: str | None = None,
                 formats=("terminal",), out_dir=None, plots: bool = False, log_to_mlflow: bool = True,
                 optuna_study=None) -> str:
    """Build the ablation report of ``study`` and return its terminal text.

    Files (one per format, plus PNG/SVG plots when ``plots``) go to ``out_dir`` and, with
    ``log_to_mlflow``, to the parent run's ``report/`` artifacts. ``optuna_study`` (an
    ``optuna.Study``) adds the parameter-importance plot.
    """
    formats = check_formats(formats)
    runs = collect(study, tracking_uri=tracking_uri, experiment=experiment)
    column = _metric(runs, metric)
    groups = _group_by(group_by, runs)
    accuracy = is_accuracy(column, runs.kept[column])
    spec = _baseline(baseline, runs)
    table = ablation_stats(runs.kept, groups, column, baseline=spec, direction=runs.direction,
                           scale=100.0 if accuracy else 1.0)
    label = ",".join(f"{k}={v}" for k, v in spec.items()) or "baseline"
    shown = display_frame(table, groups, accuracy=accuracy, baseline_label=label)
    text = "\n".join([_header(runs, column, accuracy), format_table(shown, "terminal"), _footer(runs, spec, table)])
    if out_dir is None and not log_to_mlflow:
        return text
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        paths = _write_files(runs, folder, formats, table, shown, text, column, accuracy, plots, optuna_study)
        if log_to_mlflow:
            _log(runs, paths)
    return text


def _metric(runs: StudyRuns, metric: str | None) -> str:
    """The column of the objective (or of ``metric``: ``val_acc``, ``final/val_acc`` and ``val/acc`` alike)."""
    name = metric or runs.metric
    key = schema.metric_key(name)
    return resolve_metric(runs.trials, key if key in runs.trials else name)


def _group_by(group_by, runs: StudyRuns) -> list[str]:
    """The grouping axes: given as "a,b" or a list, else every design axis of the study."""
    if group_by is None:
        groups = runs.axes
    else:
        groups = [g.strip() for g in group_by.split(",")] if isinstance(group_by, str) else list(group_by)
    if not groups:
        raise EmptyStudyError(f"study {runs.study!r} names no design axes (tag acon.axes); pass group_by")
    return groups


def _baseline(baseline, runs: StudyRuns) -> dict[str, str]:
    """The baseline spec; the default (activation=relu) is dropped quietly when no trial is a ReLU one."""
    if baseline == DEFAULT_BASELINE and not (runs.trials.get("activation", pd.Series(dtype=str)) == "relu").any():
        return {}
    # Valid baseline axes: the design axes and the descriptive params, not the metrics.
    choices = [c for c in (*runs.axes, "variant", "model", "dataset") if c in runs.trials]
    return parse_baseline(baseline, choices)


def _header(runs: StudyRuns, column: str, accuracy: bool) -> str:
    """Study name, metric and trial counts by state (duplicates named, never averaged in)."""
    c = runs.counts()
    metric = f"{column} (shown as accuracy and error in %)" if accuracy else column
    return (f"study {runs.study}: metric {metric}, {runs.direction}\n"
            f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, {c['running']} running, "
            f"{c['duplicates']} duplicate run(s) counted once\n")


def _footer(runs: StudyRuns, spec: dict, table) -> str:
    """How to read the table, and what could not be compared."""
    lines = ["", "n: completed trials; 95% CI: t-interval of the mean; Δ: mean per-seed difference to the baseline "
             "(pairs = seeds present in both); p (t): paired t-test (exact sign test when every pair differs by the "
             "same amount); p (Holm): p (t) adjusted for the number of rows tested against the baseline; p (W): "
             "Wilcoxon signed-rank, from 6 pairs; verdict 'noise' when p (Holm) >= 0.05."]
    if spec and not table["is_baseline"].any() and not (table["n_pairs"] > 0).any():
        lines.append(f"baseline {spec} has no completed trials: no differences computed.")
    elif not spec:
        lines.append("no baseline: pass baseline='axis=value' to compare rows.")
    return "\n".join(lines)


def _write_files(runs, folder: Path, formats, table, shown, text, column, accuracy, with_plots, optuna_study):
    """Tables in every format (CSV with raw numbers; terminal with header) and, if asked, the plots."""
    frames = {"default": shown, "csv": table}
    paths = write_tables(frames, [f for f in formats if f != "terminal"], folder, f"{runs.study}_table")
    if "terminal" in formats:
        paths.append(folder / f"{runs.study}_table.txt")
        paths[-1].write_text(text + "\n", encoding="utf-8")
    if with_plots:
        paths += _plots(runs, folder, column, accuracy, optuna_study)
    return paths


def _plots(runs: StudyRuns, folder: Path, column: str, accuracy: bool, optuna_study) -> list[Path]:
    """EDF per design axis (and complexity-normalised by FLOPs when logged), learning curves, importance."""
    paths = []
    done = runs.kept[runs.kept["state"] == "COMPLETE"]
    flops = schema.COST + "flops"
    normalise = flops in done and done[flops].notna().all()
    for axis in runs.axes:
        paths += plots.plot_edf(runs.kept, axis, column, folder, accuracy=accuracy)
        if normalise:
            paths += plots.plot_edf(runs.kept, axis, column, folder, accuracy=accuracy, weight_by=flops)
    key = schema.epoch_key(runs.metric)
    hist = history(runs, keys=(key,))
    if not hist.empty:
        paths += plots.plot_learning_curves(hist, key, folder, scale=100.0 if accuracy else 1.0)
    if optuna_study is not None:
        paths += plots.plot_param_importance(optuna_study, folder)
    return paths


def _log(runs: StudyRuns, paths: list[Path]) -> None:
    """Log every written file to the parent run under ``report/``."""
    client = MlflowClient(tracking_uri=runs.tracking_uri)
    for path in paths:
        client.log_artifact(runs.parent_run_id, str(path), artifact_path=ARTIFACT_DIR)
