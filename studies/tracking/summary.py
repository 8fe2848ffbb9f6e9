"""What a run says when it ends, and what it leaves on the MLflow parent run.

It reads the Optuna study (what this run knows for sure): per variant n, mean and std of
the objective (accuracy in %, as ``report`` shows it), the cells never run or failed, and
how to open the results. The full statistics live in ``report``.
"""
from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState

from studies.tracking import schema
from studies.store import attrs

DONE = ("COMPLETE", "PRUNED")


def summary_frame(study, *, scale: float = 1.0) -> pd.DataFrame:
    """One row per variant: trials by state and the objective's n, mean, std over seeds (times ``scale``)."""
    rows = [{"variant": t.user_attrs.get(attrs.VARIANT, "?"), "state": t.state.name,
             "value": t.value * scale if t.state == TrialState.COMPLETE else None} for t in _trials(study)]
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


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table with "-" where a value is missing (a variant with no finished trial)."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="-")


def unfinished(study) -> tuple[list[str], list[str]]:
    """Grid cells with no complete or pruned trial, as ``variant sSEED``: (never run, failed)."""
    trials = [t for t in _trials(study) if attrs.CELL_KEY in t.user_attrs]
    done = {t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name in DONE}
    failed = {t.user_attrs[attrs.CELL_KEY]: _cell(t) for t in trials if t.state.name == "FAIL"}
    never = {t.user_attrs[attrs.CELL_KEY]: _cell(t) for t in trials if t.state.name in ("WAITING", "RUNNING")}
    return ([c for k, c in never.items() if k not in done and k not in failed],
            [c for k, c in failed.items() if k not in done])


def failure_lines(study) -> list[str]:
    """Each distinct reason why cells are left failed (its first line), the cells it hit, and what to do: a user
    error (the study's own loop or factory, a bad setting) is fixed first, anything else a rerun retries."""
    trials = [t for t in _trials(study) if attrs.CELL_KEY in t.user_attrs]
    done = {t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name in DONE}
    newest = {t.user_attrs[attrs.CELL_KEY]: t for t in trials if t.state.name == "FAIL" and t.user_attrs[attrs.CELL_KEY] not in done}
    reasons: dict[tuple[str, bool], list[str]] = {}
    for t in newest.values():
        reasons.setdefault((fail_reason(t), bool(t.user_attrs.get(attrs.USER_ERROR))), []).append(_cell(t))
    return [f"{len(cells)} cell(s) failed: {why} ({_some(cells)}); "
            + ("fix it, then rerun the same command: the study resumes" if user
               else "rerun the same command to retry them")
            for (why, user), cells in reasons.items()]


def fail_reason(trial) -> str:
    """The first line of why a trial failed; a trial failed by Optuna's heartbeat check says nothing itself."""
    reason = trial.user_attrs.get(attrs.FAIL_REASON) or attrs.STALE
    return reason.strip().splitlines()[0]


def objective_scale(study) -> tuple[str, float]:
    """The objective's name and display scale: accuracies in percent, like ``report``."""
    names = study.metric_names or ["value"]
    return names[0], 100.0 if any(k in names[0] for k in ("acc", "top")) else 1.0


def summary_text(result, tracking_uri: str | None = None) -> str:
    """Where the study lives, counts by state, the per-variant table, what is left, how to browse it."""
    study = result.study
    name, scale = objective_scale(study)
    table = summary_frame(study, scale=scale).rename(columns={"mean": f"mean {name}{' %' if scale == 100 else ''}"})
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(result.counts.items()))
    lines = [f"study {study.study_name}: ran {result.ran} trial(s) now; {counts}",
             _markdown(table) if len(table) else "(no trials)", *_best_sampled(study, name, scale)]
    lines += _race_lines(study)
    never, failed = unfinished(study)
    if never:
        lines.append(f"{len(never)} cell(s) not run yet: {_some(never)}; rerun the same command to run them")
    lines += failure_lines(study)
    if tracking_uri:
        lines += _browse(tracking_uri, result.parent_run_id)
    return "\n".join(lines)


def _race_lines(study) -> list[str]:
    """A raced study: where the race stands, who was dropped, and the trials it used against the full grid."""
    from studies.race.record import describe_answer, describe_state, race_state

    state = race_state(study)
    if state is None:
        return []
    dropped = "; ".join(f"{d} in round {drop.round} (p={drop.p:.2g} vs {drop.lost_to})"
                        for d, drop in state.dropped.items()) or "none"
    grid = len(state.designs) * state.plan.max_seeds
    return [f"race: {describe_state(state)}; dropped: {dropped}; {len(state.wanted())} of the {grid} grid cells",
            *(f"race answer: {line}" for line in describe_answer(state.answer()))]


def _best_sampled(study, name: str, scale: float) -> list[str]:
    """A search study's best trial and the settings it sampled (a grid's params are its cell: no line)."""
    best = _best_trial(study)
    if best is None:
        return []
    sampled = {k: v for k, v in best.params.items() if k not in schema.CELL_PARAMS}
    if not sampled:
        return []
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(sampled.items()))
    unit = " %" if scale == 100 else ""
    return [f"best trial #{best.number}: {name} {best.value * scale:.2f}{unit} with {shown} "
            f"(the table averages trials of different settings; `report` lists the best ones)"]


def _best_trial(study):
    """The completed trial with the best objective (Optuna's ``best_trial``), or None before any completes."""
    try:
        return study.best_trial
    except ValueError:
        return None


def publish(tracker, spec, settings: dict, study) -> None:
    """Leave the study on its parent run: description, settings as params, mean objective per variant."""
    frame = summary_frame(study)
    means = {v: m for v, m in zip(frame["variant"], frame["mean"]) if pd.notna(m)}
    pick = max if spec.direction == "maximize" else min
    tracker.summarize(means, pick(means, key=means.get) if means else None)
    best = _best_trial(study)
    if best is not None and not spec.is_grid:
        tracker.summarize_search(best.number, best.value)
    name, scale = objective_scale(study)
    shown = summary_frame(study, scale=scale)
    results = _markdown(shown) if len(shown) else "_no trial finished yet_"
    results += "".join(f"\n\n{line}" for line in _race_lines(study))  # a race: where it stands, who was dropped
    logged = {k: v for k, v in settings.items() if k != "designs"}
    tracker.describe_parent(parent_note(spec, study.study_name, logged, results), logged)


def parent_note(spec, optuna_study: str, settings: dict, results: str) -> str:
    """The parent run's description in Markdown: the question, the settings, the results so far."""
    rows = "\n".join(f"| {k} | {'-' if v is None else v} |" for k, v in sorted(settings.items()))
    head = (f"**{spec.doc}**\n\nObjective `{schema.final_metric(spec.metric)}` ({spec.direction}); Optuna study "
            f"`{optuna_study}`; full table: `run_study.py report {spec.name}`.")
    return head + schema.RESULTS_HEADING + results + schema.SETTINGS_HEADING + f"| setting | value |\n|---|---|\n{rows}"


def _browse(tracking_uri: str, parent_run_id: str) -> list[str]:
    """The command that opens the MLflow UI on this store, and the parent run's address in it."""
    from studies.store.storage import mask_url
    from studies.tracking.writer import Tracker

    url = Tracker.attach(tracking_uri, parent_run_id).parent_url()
    if tracking_uri.startswith(("http://", "https://")):
        return [f"browse: {mask_url(tracking_uri).rstrip('/')}/{url}"]
    return [f"browse: mlflow ui --backend-store-uri {mask_url(tracking_uri)}",
            f"  then open http://127.0.0.1:5000/{url}"]


def _trials(study) -> list:
    return attrs.real(study.get_trials(deepcopy=False))


def _cell(trial) -> str:
    return f"{trial.user_attrs.get(attrs.VARIANT, '?')} s{trial.user_attrs.get(attrs.SEED, '?')}"


def _some(cells: list[str], limit: int = 6) -> str:
    return ", ".join(cells[:limit]) + (f" and {len(cells) - limit} more" if len(cells) > limit else "")
