"""``build_report``: collect a study, tabulate it, write the files and publish them on the parent run.

The four stages are plain calls: collect (report.collect) -> statistics (report.stats) ->
tables and plots (report.tables, report.plots) -> the parent run (``studies.tracking``):
artifacts under ``report/tables`` and ``report/plots``, the table in its description.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from acon.registry import unknown_choice
from report import learned as act
from report import fidelity as fid
from report import race_answer as racing
from report import plots, summary
from report.against import Against, against as compare
from report.columns import add_columns, legend
from report.pareto import plot_pareto
from report.power import check_effect
from report.collect import StudyRuns, collect, history
from report.errors import EmptyStudyError, ReportError
from report.stats import ablation_stats, is_accuracy, parse_baseline, resolve_metric
from report.tables import SUFFIX, check_formats, compact_frame, display_frame, format_table, group_labels, html_page, wrap
from studies.errors import first_line
from studies.tracking import schema
from studies.tracking.writer import Tracker

DEFAULT_BASELINE = "activation=relu"


@dataclass
class _Report:
    """One built report: the runs, the numeric and the readable table, and the words around them."""

    runs: StudyRuns
    column: str
    groups: list[str]
    accuracy: bool
    table: pd.DataFrame
    shown: pd.DataFrame
    header: str
    footnote: str  # what could not be compared, and the next run; each format adds the legend of its own columns
    summary: str = ""  # what to conclude and what to run next (report.summary)
    baseline_label: str = ""
    top: pd.DataFrame | None = None  # a search study's best trials (``best_trials``)
    sites: pd.DataFrame | None = None  # with ``activations``: every trial's site table (``report.learned``)
    race: object = None  # a raced study's replayed race (``report.race_answer``)
    channels: pd.DataFrame | None = None
    fidelity: fid.Fidelity | None = None  # with ``fidelity``: each epoch's ranking against the final one
    rank_plot: str = "none drawn (--no-log without --out)"  # where the fidelity's rank plot went
    against: Against | None = None  # with ``against``: this study's ranking against another's

    def rank_sections(self, brief: bool = False) -> list[tuple[str, str, pd.DataFrame]]:
        """(heading, text, table) of the fidelity and the comparison asked for; ``brief``: one line each, no table
        (the parent run's description, which has 7,900 characters for everything)."""
        out, files = [], list(self.rank_files())
        if self.fidelity is not None:
            text = self.fidelity.brief() if brief else self.fidelity.summary()
            out.append((fid.HEADING, text, self.fidelity.shown()))
        if self.against is not None:
            text = self.against.verdict() + ("" if brief else ".\n" + self.against.note(self.baseline_label))
            out.append((f"Against {self.against.studies[1]}", text, self.against.shown()))
        if brief:  # the tables are artifacts
            return [(h, f"{t} (table: {schema.TABLES_DIR}/{name})", pd.DataFrame())
                    for (h, t, _), name in zip(out, files)]
        return out

    def rank_files(self) -> dict[str, pd.DataFrame]:
        """The numbers of the fidelity and the comparison, by CSV file name."""
        study, files = self.runs.study, {}
        if self.fidelity is not None:
            files[f"{study}_fidelity.csv"] = self.fidelity.table
        if self.against is not None:
            files[f"{study}_against_{self.against.studies[1]}.csv"] = self.against.table
        return files

    def intro(self, fmt: str) -> list[str]:
        """The summary, then (a search study) its best trials as a table in ``fmt``."""
        lines = [wrap(self.summary) if fmt == "terminal" else self.summary]
        if self.top is not None and not self.top.empty:
            lines += ["", format_table(self.top, fmt)] if fmt == "terminal" else [format_table(self.top, fmt)]
        return lines

    def notes(self, frame: pd.DataFrame) -> str:
        """The legend of ``frame``'s columns, then the footnote."""
        return "\n".join([legend(frame.columns, baseline_label=self.baseline_label, accuracy=self.accuracy),
                          self.footnote])

    def race_section(self) -> tuple[str, pd.DataFrame] | None:
        """A raced study's summary line and its rounds (None: not a race)."""
        return None if self.race is None else racing.race_lines(self.race)

    def activations(self) -> tuple[pd.DataFrame, str] | None:
        """The per-design table of what the sites learned and its legend (None: not asked for)."""
        if self.sites is None:
            return None
        table = act.activation_table(self.sites)
        if table.empty:
            return table, ("No completed trial of this study recorded ACON activation statistics "
                           "(activations/sites.csv; a run with --act-images 0 records none).")
        return table, act.LEGEND


def build_report(study: str, *, tracking_uri: str | None = None, experiment: str | None = None, group_by=None,
                 baseline: str | dict | None = "activation=relu", metric: str | None = None,
                 formats=("terminal",), out_dir=None, plots: bool = False, log_to_mlflow: bool = True,
                 optuna_study=None, effect: float | None = None, activations: bool = False, fidelity: bool = False,
                 against: str | None = None) -> str:
    """Build the ablation report of ``study`` and return it in the first of ``formats``.

    Files (one per format, plus PNG/SVG plots when ``plots``) go to ``out_dir``. With
    ``log_to_mlflow`` the parent run gets them (and the HTML page and CSV) as artifacts, the
    Markdown table in its description and the mean objective per row as metrics.
    ``optuna_study`` (an ``optuna.Study``) adds the parameter-importance plot. ``effect`` (in the table's
    units, e.g. 0.5 accuracy points) is the difference the seeds-needed column and the next-run line plan for.
    ``activations`` adds what each design's sites learned (``report.learned``): a table by stage and,
    with ``plots``, beta by depth, its spread across inputs and the learned curves.
    ``fidelity`` adds how each epoch ranks the designs against the final epoch (``report.fidelity``, with its rank
    plot wherever files go); ``against`` names a study of the same designs (another schedule, dataset or model,
    read from the same store and ``experiment``) to compare rankings with (``report.against``).
    """
    formats = check_formats(formats)
    check_effect(effect)
    rep = _build(collect(study, tracking_uri=tracking_uri, experiment=experiment), group_by, baseline, metric, effect)
    if activations:
        rep.sites, rep.channels = act.collect_sites(rep.runs)
    if fidelity:
        rep.fidelity = fid.fidelity(rep.runs, schema.epoch_key(rep.column))
    if against:
        rep.against = _against(rep, against, experiment, baseline, metric)
    if out_dir is None and not log_to_mlflow:
        return _render(rep, formats[0], [])
    wanted = formats + tuple(f for f in ("html", "csv") if log_to_mlflow and f not in formats)
    if out_dir is not None:
        _check_writable(Path(out_dir))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        images = _plots(rep, folder, optuna_study) if plots else []
        if rep.fidelity is not None:
            drawn = fid.plot_ranks(rep.fidelity, folder)
            images += drawn
            rep.rank_plot = str(drawn[0]) if out_dir else f"{schema.PLOTS_DIR}/{drawn[0].name} on the parent run"
        tables = _write(rep, folder, wanted, images)
        if log_to_mlflow:
            _publish(rep, tables, images)
    return _render(rep, formats[0], images)


def _build(runs: StudyRuns, group_by, baseline, metric, effect=None) -> _Report:
    """Statistics of the study's runs, the baseline row first, and their readable forms."""
    column = _metric(runs, metric)
    groups = _group_by(group_by, runs)
    accuracy = is_accuracy(column, runs.kept[column])
    spec = _baseline(baseline, runs)
    table = ablation_stats(runs.kept, groups, column, baseline=spec, direction=runs.direction,
                           scale=100.0 if accuracy else 1.0, effect=effect, bounds=(0.0, 100.0) if accuracy else None)
    table = table.sort_values("is_baseline", ascending=False, kind="stable").reset_index(drop=True)
    label = ",".join(f"{k}={v}" for k, v in spec.items()) or "baseline"
    race = racing.race_of(runs, column)
    if race is not None:  # a dropped design's row: when it left the race, not a verdict from fewer seeds
        table["verdict"] = racing.race_verdicts(race, runs.kept, table, groups)
    shown = add_columns(display_frame(table, groups, accuracy=accuracy, baseline_label=label), table)
    paragraph, next_run = summary.conclusions(runs, table, groups, column, label, accuracy, effect)
    top = None
    if runs.search:  # the table's rows mix trials of different sampled settings: the best trials come first
        top = best_trials(runs, column, accuracy)
        paragraph = _search_summary(runs, column, len(top))
    rep = _Report(runs, column, groups, accuracy, table, shown, _header(runs, column, accuracy),
                  "\n".join(filter(None, [_footer(spec, table), next_run])), paragraph, label, top)
    rep.race = race
    return rep


TOP_TRIALS = 5


def best_trials(runs: StudyRuns, column: str, accuracy: bool, top: int = TOP_TRIALS) -> pd.DataFrame:
    """A search study's best completed trials, best first: trial number, objective and the settings the search
    sampled (the ``param.*`` columns that differ between its completed trials)."""
    done = runs.kept[(runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()]
    sampled = [c for c in done.columns if c.startswith("param.") and done[c].nunique(dropna=True) > 1]
    best = done.sort_values(column, ascending=runs.direction == "minimize", kind="stable").head(top)
    name = "acc %" if accuracy else column
    out = pd.DataFrame({"trial": best["trial"].astype(str).to_numpy(),
                        name: [f"{v * (100.0 if accuracy else 1.0):.2f}" for v in best[column]]})
    for c in sampled:
        out[c.removeprefix("param.")] = [_short(v) for v in best[c]]
    return out


def _against(rep: _Report, study: str, experiment: str | None, baseline, metric: str | None) -> Against:
    """``rep``'s study against ``study``, read from the same store (and experiment, when one was named)."""
    try:
        other = collect(study, tracking_uri=rep.runs.tracking_uri, experiment=experiment)
    except ReportError as e:
        raise type(e)(f"--against {study}: {first_line(e)}") from None
    column = _metric(other, metric)
    return compare(rep.runs, other, (rep.column, column), (_baseline(baseline, rep.runs), _baseline(baseline, other)),
                   scale=100.0 if rep.accuracy else 1.0, unit="acc %" if rep.accuracy else "metric")


def _search_summary(runs: StudyRuns, column: str, shown: int) -> str:
    """The summary line of a search study, above its best trials."""
    done = int(((runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()).sum())
    if not shown:
        return "No trial of this search has completed yet."
    return (f"Best {shown} of {done} completed trials of this search, with the settings it sampled (the table "
            f"after them averages trials of different settings; compare designs with a grid study):")


def _short(value) -> str:
    """A sampled setting as text: floats to 4 significant digits (``0.05485``), the rest as logged."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() and "." not in str(value) else f"{number:.4g}"


def _render(rep: _Report, fmt: str, images: list[Path], brief: bool = False) -> str:
    """The report as text in ``fmt``: terminal and Markdown with header and footnote, CSV raw, HTML a page.
    ``brief`` (the parent run's description): the rank checks in a line each, without their tables."""
    acts, race, ranks = rep.activations(), rep.race_section(), rep.rank_sections(brief)
    if fmt == "terminal":
        compact = compact_frame(rep.table, rep.groups, accuracy=rep.accuracy)
        more = [] if acts is None else ["", ACT_HEADING, *_table_lines(acts[0], "terminal"), "", wrap(acts[1])]
        raced = [] if race is None else ["", wrap(race[0]), *_table_lines(race[1], "terminal")]
        ranked = [line for h, text, frame in ranks
                  for line in ("", h, *_table_lines(frame, "terminal"), "", wrap(text))]
        drawn = [] if rep.fidelity is None else [f"rank plot: {rep.rank_plot}"]
        return "\n".join([rep.header, *rep.intro(fmt), "", format_table(compact, "terminal"), "",
                          wrap(rep.notes(compact)), *raced, *more, *ranked, *drawn])
    if fmt == "markdown":
        more = [] if acts is None else [f"**{ACT_HEADING}**", *_table_lines(acts[0], "markdown"), acts[1]]
        raced = [] if race is None else [race[0], *_table_lines(race[1], "markdown")]
        ranked = [part for h, text, frame in ranks for part in (f"**{h}**", text.replace("\n", "  \n"),
                                                                 *_table_lines(frame, "markdown"))]
        return "\n\n".join([rep.header.replace("\n", "  \n"), *rep.intro(fmt), format_table(rep.shown, "markdown"),
                            rep.notes(rep.shown), *raced, *more, *ranked])
    if fmt == "csv":
        return format_table(rep.table, "csv")
    if fmt == "html":
        return html_page(f"{rep.runs.study}: ablation", [*rep.header.splitlines(), rep.summary], rep.runs.settings, rep.shown,
                         rep.notes(rep.shown), images,
                         more=([] if race is None else [("Race", race[1], race[0])])
                         + ([] if acts is None else [(ACT_HEADING, *acts)])
                         + [(h, frame, text) for h, text, frame in ranks])
    return format_table(rep.shown, fmt)


ACT_HEADING = "What each design's activation sites learned (mean over seeds)"


def _table_lines(table: pd.DataFrame, fmt: str) -> list[str]:
    return [format_table(table, fmt)] if not table.empty else []


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written there, or say why not in one line."""
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"cannot write the report to {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ReportError(f"cannot write the report to {folder}: {e.strerror or e}") from None


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
    for axis in groups:
        if axis not in runs.trials:
            raise ReportError(unknown_choice("axis to group by", axis, _axis_choices(runs)))
    return groups


def _axis_choices(runs: StudyRuns) -> list[str]:
    """What a table can group by or take a baseline from: the design axes and the descriptive params."""
    return [c for c in (*runs.axes, "variant", "model", "dataset") if c in runs.trials]


def _baseline(baseline, runs: StudyRuns) -> dict[str, str]:
    """The baseline spec; the default (activation=relu) is dropped quietly when no trial is a ReLU one."""
    if baseline == DEFAULT_BASELINE and not (runs.trials.get("activation", pd.Series(dtype=str)) == "relu").any():
        return {}
    spec = parse_baseline(baseline, _axis_choices(runs))
    for axis, value in spec.items():  # a typo in a value would give a table with no comparison at all
        values = runs.trials[axis].astype(str)
        if not (values == value).any():
            raise ReportError(unknown_choice(f"baseline value of {axis}", value, values.unique()))
    return spec


def _header(runs: StudyRuns, column: str, accuracy: bool) -> str:
    """Study name, metric and trial counts by state (duplicates named, never averaged in)."""
    c = runs.counts()
    metric = f"{column} (shown as accuracy in %)" if accuracy else column
    return (f"study {runs.study}: metric {metric}, {runs.direction}\n"
            f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, {c['running']} running, "
            f"{c['duplicates']} duplicate run(s) counted once\n")


def _footer(spec: dict, table) -> str:
    """What could not be compared."""
    lines = []
    if spec and not table["is_baseline"].any() and not (table["n_pairs"] > 0).any():
        lines.append(f"baseline {spec} has no completed trials: no differences computed.")
    elif not spec:
        lines.append("no baseline: pass baseline='axis=value' to compare rows.")
    return "\n".join(lines)


def _write(rep: _Report, folder: Path, formats, images: list[Path]) -> list[Path]:
    """One table file per format (``STUDY_table.EXT``); with activations, every trial's sites (``STUDY_sites.csv``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        paths.append(folder / f"{rep.runs.study}_table{SUFFIX[fmt]}")
        paths[-1].write_text(_render(rep, fmt, images) + "\n", encoding="utf-8")
    if rep.sites is not None and not rep.sites.empty:
        paths.append(folder / f"{rep.runs.study}_sites.csv")
        rep.sites.to_csv(paths[-1], index=False)
    for name, frame in rep.rank_files().items():
        paths.append(folder / name)
        frame.to_csv(paths[-1], index=False)
    return paths


def _plots(rep: _Report, folder: Path, optuna_study) -> list[Path]:
    """EDF per design axis with several values (and by FLOPs when logged), learning curves, importance."""
    runs, column, paths = rep.runs, rep.column, []
    done = runs.kept[runs.kept["state"] == "COMPLETE"]
    flops = schema.COST + "flops"
    normalise = flops in done and done[flops].notna().all() and done[flops].nunique() > 1
    for axis in [a for a in runs.axes if done[a].nunique() > 1]:  # one value: nothing to compare
        paths += plots.plot_edf(runs.kept, axis, column, folder, accuracy=rep.accuracy)
        if normalise:
            paths += plots.plot_edf(runs.kept, axis, column, folder, accuracy=rep.accuracy, weight_by=flops)
    key = schema.epoch_key(runs.metric)
    hist = history(runs, keys=(key,))
    if not hist.empty:
        paths += plots.plot_learning_curves(hist, key, folder, scale=100.0 if rep.accuracy else 1.0)
    if optuna_study is not None:
        paths += plots.plot_param_importance(optuna_study, folder)
    paths += plot_pareto(rep.table, rep.groups, folder, ylabel="accuracy (%)" if rep.accuracy else column)
    if rep.race is not None:
        paths += racing.plot_race(runs, rep.race, column, folder, scale=100.0 if rep.accuracy else 1.0)
    if rep.sites is not None:
        paths += act.plot_activations(rep.sites, rep.channels, folder)
    return paths


def _publish(rep: _Report, tables: list[Path], images: list[Path]) -> None:
    """Files as parent-run artifacts, the Markdown table as its description's results, mean per row as metrics."""
    tracker = Tracker.attach(rep.runs.tracking_uri, rep.runs.parent_run_id)
    tracker.log_artifacts(tables, schema.TABLES_DIR)
    tracker.log_artifacts(images, schema.PLOTS_DIR)
    tracker.set_results(_render(rep, "markdown", [], brief=True))
    scale, labels = 100.0 if rep.accuracy else 1.0, group_labels(rep.table, rep.groups, sep="/", every_axis=True)
    means = {label: m / scale for label, m in zip(labels, rep.table["mean"]) if pd.notna(m)}
    best = [label for label, b in zip(labels, rep.table["best"]) if b]
    tracker.summarize(means, best[0] if best else None)
    if rep.fidelity is not None:
        f = rep.fidelity
        tracker.log_fidelity(dict(zip(f.epochs, f.table["tau"])), f.lead_epoch, f.brief())
    if rep.against is not None:
        tracker.log_against(rep.against.studies[1], rep.against.tau, rep.against.verdict())
