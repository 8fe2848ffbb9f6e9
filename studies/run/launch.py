"""Run a study: Optuna decides what to run next, each trial trains a model, MLflow records it.

The grid studies enqueue every missing (design, seed) cell as a WAITING Optuna trial, then
any number of workers pop and run them; a rerun re-enqueues cells that failed or were cut
off, so it completes the study without duplicating what is done.

A process resolves its study once (``resolve``: the definition, settings, race plan and names, all checked before
any store is opened), opens the stores once (``open_run``: a ``RunContext``), and passes that context down.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.catalog import load_study
from studies.errors import UserError, first_line
from studies.run.build import load_data
from studies.run.cells import axis_choices
from studies.run.context import Resolved, RunContext
from studies.run.interrupt import check, graceful_signals
from studies.run.options import RunOptions, StudyRun
from studies.run.queue import (all_done, claim, drop, duplicate_of, enqueue_missing, missing_cells, remaining,
                               state_counts, wait_for_running, worker_id)
from studies.run.race_schedule import race_step, start_race
from studies.run.trial import execute_trial
from studies.settings import Settings
from studies.design_options import parse
from studies.spec import DESIGN_AXES, NOT_APPLICABLE, Study, design_cell
from studies.store import attrs
from studies.store.outage import say
from studies.store.storage import (fail_stale_trials, open_storage, require_existing, resolve_storage,
                                   resolve_tracking_uri, storage_file)
from studies.tracking.summary import publish
from studies.tracking.writer import Tracker

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_study(study: Study | str, options: RunOptions | None = None, *, join: bool = False) -> StudyRun:
    """Create or resume ``study`` and run every missing trial in this process.

    ``join=True`` (a worker) only joins a study that already exists and never enqueues
    new grid cells unless they were left failed.
    """
    options = options or RunOptions()
    resolved = resolve(study, options)
    settings = resolved.settings
    load_data(settings["dataset"], options.data_dir, options.download, settings.get("limit"))  # fail before any trial
    ctx = open_run(resolved, options, join=join)
    with graceful_signals():
        try:
            ran = _run_loop(ctx)
        except BaseException:
            ctx.tracker.close_parent("KILLED" if not join else "RUNNING")
            raise
    if not join or all_done(ctx):
        publish(ctx.tracker, ctx.spec, settings, ctx.study)
        ctx.tracker.close_parent("FINISHED" if all_done(ctx) else "KILLED")
    return _result(ctx, ran)


def prepare_study(study: Study | str | Resolved, options: RunOptions | None = None) -> StudyRun:
    """Create or resume ``study`` and its parent run and queue its missing grid cells; run nothing.

    Launchers call it before starting workers that ``join`` the study (with the ``Resolved`` study they hold).
    """
    options = options or RunOptions()
    resolved = study if isinstance(study, Resolved) else resolve(study, options)
    ctx = open_run(resolved, options, join=False)
    fail_stale_trials(ctx.study, worker_id())
    if resolved.spec.is_grid:
        enqueue_missing(ctx)
    return _result(ctx, 0)


def resolve(study: Study | str, options: RunOptions) -> Resolved:
    """The study with its preset's design cells, its checked settings, its race plan and its Optuna name; unknown
    names and bad values refused here, before any store is opened (a bad race leaves nothing behind)."""
    options.check()
    spec = load_study(study) if isinstance(study, str) else study
    spec = spec.for_preset(options.preset)
    settings = spec.settings(options.preset, options.overrides)
    check_names(spec, settings)
    return Resolved(spec, settings, _race_plan(spec, settings, options), options.study_name_for(spec.name))


def _race_plan(spec: Study, settings: Settings, options: RunOptions):
    """``--race``'s plan (checked), or None."""
    if not options.race:
        return None
    from studies.race.plan import RacePlan

    if not spec.is_grid:
        raise UserError(f"--race races the design cells of a grid study; {spec.name!r} samples its settings "
                        f"(a search)")
    if spec.pruner != "none":  # a pruned cell has no final value to rank or pair (studies.race)
        raise UserError(f"--race decides which designs stop, with an error level; {spec.name!r} also prunes "
                        f"(pruner={spec.pruner!r}): race a copy of it with pruner='none'")
    return RacePlan(max_seeds=int(settings["seeds"]), alpha=options.race_alpha, test=options.race_test,
                    direction=spec.direction, futility=options.race_futility)


def check_names(spec: Study, settings: Settings) -> None:
    """Refuse unknown model, dataset, activation, generator or placement names, and options the activation does not
    take, before anything runs."""
    from ablation import get_generator, parse_placement
    from ablation.models import model_entry
    from acon import get_activation
    from studies.data import DATASETS

    model_entry(settings["model"])
    if isinstance(spec.train, str):  # a training loop by import path: found now, not in every trial
        from studies.run.custom_loop import resolve_train

        resolve_train(spec.train)
    DATASETS.get(settings["dataset"])
    for design in spec.designs:
        try:
            get_activation(design["activation"])
            if design.get("generator", NOT_APPLICABLE) != NOT_APPLICABLE:
                get_generator(design["generator"])
            if design.get("placement", NOT_APPLICABLE) != NOT_APPLICABLE:
                parse_placement(design["placement"])
            _check_options(design_cell(design))
        except (KeyError, ValueError) as exc:  # the design cells are user input, checked here at the edge
            raise UserError(f"design {design}: {first_line(exc)}") from exc


def _check_options(cell: dict[str, Any]) -> None:
    """Refuse an option the cell's activation (with its generator) does not take, naming those it does."""
    from acon.activations import activation_options
    from acon.registry import check_options

    if cell["options"] != NOT_APPLICABLE:
        generator = None if cell["generator"] == NOT_APPLICABLE else cell["generator"]
        accepted = activation_options(cell["activation"], generator)
        check_options(f"activation {cell['activation']!r}", parse(cell["options"]), accepted)


def _result(ctx: RunContext, ran: int) -> StudyRun:
    study = ctx.study
    return StudyRun(study, ctx.tracker.parent_id, ran, state_counts(study),
                    missing_cells(study, ctx.spec, ctx.settings), ctx.url)


def open_run(resolved: Resolved, options: RunOptions, *, join: bool) -> RunContext:
    """Open the stores (Optuna storage, MLflow tracker), create or load the Optuna study, record a race's plan and
    the parent run: this process's ``RunContext``."""
    spec, settings, name = resolved.spec, resolved.settings, resolved.name
    url = resolve_storage(options.storage, study=name)
    holder: dict[str, RunContext] = {}
    if join:  # a worker must not create an empty SQLite or journal file where it expected a study
        require_existing(url)
    created = _new_file(url)
    storage = open_storage(url, outage_limit=options.outage_limit)
    if join and name not in optuna.get_all_study_names(storage):  # before the tracker creates the experiment
        raise UserError(f"no study named {name!r} in this storage; start it with `run_study.py run` first")
    if hasattr(storage, "heartbeat_stale_trial_callback") and storage.get_heartbeat_interval():
        storage.heartbeat_stale_trial_callback = lambda st, t: _requeue_dead(holder["ctx"], t)
    # the tracking store is checked before the Optuna study is created: a bad URI leaves nothing behind,
    # not even the storage file that opening the storage just created
    try:
        tracker = Tracker(resolve_tracking_uri(options.tracking_uri), options.experiment or spec.name, study=spec.name,
                          optuna_study=name, preset=options.preset, axes=DESIGN_AXES, metric=spec.metric,
                          direction=spec.direction, sampler=spec.sampler, outage_limit=options.outage_limit)
    except BaseException:
        if created is not None:
            _dispose(storage)
            created.unlink(missing_ok=True)
        raise
    study = _create_or_load(spec, name, storage, settings, join=join)
    ctx = holder["ctx"] = RunContext(resolved, options, study, tracker, url)
    start_race(ctx, join=join)
    parent = study.user_attrs.get(attrs.PARENT_RUN_ID)
    if join and parent:
        tracker.attach_parent(parent)
    else:
        study.set_user_attr(attrs.PARENT_RUN_ID, tracker.open_parent(parent, url))
        study.set_metric_names([spec.metric])
        publish(tracker, spec, settings, study)
    return ctx


def _new_file(url: str) -> Path | None:
    """The file a SQLite or journal storage at ``url`` would create now, or None (it exists, or a server)."""
    path = storage_file(url)
    return None if path is None or os.path.exists(path) else Path(path)


def _dispose(storage: Any) -> None:
    """Close a SQLite storage's connections before its file is removed."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def _create_or_load(spec: Study, name: str, storage: Any, settings: Settings, *, join: bool) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction, load_if_exists=True,
                                sampler=_sampler(spec, settings), pruner=_pruner(spec))
    recorded = study.user_attrs.get(attrs.SETTINGS)
    if recorded is None:
        study.set_user_attr(attrs.SETTINGS, settings.results())
        study.set_user_attr(attrs.ACON_STUDY, spec.name)
    elif not join:
        _check_same_settings(name, recorded, settings.results())
    if spec.is_grid:
        _check_same_axes(name, study, axis_choices(spec.cells(settings)))
    return study


def _check_same_axes(name: str, study: optuna.Study, wanted: dict[str, list[Any]]) -> None:
    """Refuse design cells whose axis values the study's recorded Optuna params cannot take.

    A grid trial's axes are categorical params, and Optuna fixes a categorical's choices for a whole
    study: a design with a new value on an axis that already varies would fail every trial. A new axis
    and more seeds are fine.
    """
    recorded: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        for axis, dist in trial.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                recorded.setdefault(axis, list(dist.choices))
    diff = [f"{axis} in {recorded[axis]} (now {values})" for axis, values in wanted.items()
            if axis in recorded and recorded[axis] != values]
    if diff:
        raise UserError(f"study {name!r} was run with {'; '.join(diff)}, and an Optuna study cannot change an "
                        f"axis's values; pass --study-name NEW to run these designs as a new study")


def _check_same_settings(name: str, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
    before = {**Settings().results(), **recorded}  # a setting declared after the study began had its default
    diff = [f"{k}={before.get(k)!r} (now {v!r})" for k, v in wanted.items() if before.get(k) != v]
    if diff:
        raise UserError(f"study {name!r} was run with {', '.join(diff)}; rerun with the same settings to resume, "
                         f"or pass --study-name NEW to start a new study")


def _sampler(spec: Study, settings: Settings) -> optuna.samplers.BaseSampler:
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=None, n_startup_trials=min(5, settings.get("n_trials") or 5))
    return optuna.samplers.RandomSampler()  # grid cells are enqueued; the sampler never picks them


def _pruner(spec: Study) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def _run_loop(ctx: RunContext) -> int:
    study = ctx.study
    fail_stale_trials(study, worker_id())
    if ctx.spec.is_grid:
        enqueue_missing(ctx)
    limit = ctx.options.max_trials
    ran = 0
    # loop until the queue is empty rather than a count fixed up front: cells of dead workers come back
    with ctx.progress_bar(remaining(ctx) if limit is None else min(limit, remaining(ctx))) as bar:
        while limit is None or ran < limit:
            trial = _next_trial(ctx)
            if trial is None:
                break
            if execute_trial(ctx, trial) == TrialState.FAIL:
                ctx.failed.add(attrs.key_of(trial))  # a race does not queue it again in this run
            ran += 1
            check()
            bar.update(1)
    return ran


def _next_trial(ctx: RunContext) -> optuna.Trial | None:
    """Pop a WAITING cell (grid) or ask the sampler (search); None when nothing is left to run."""
    study = ctx.study
    while True:
        fail_stale_trials(study, worker_id())
        if not ctx.spec.is_grid:
            if remaining(ctx) <= 0:
                return None
            trial = claim(study)
            if trial is not None:
                return trial
            continue
        raced = attrs.RACE in study.user_attrs
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = claim(study)
            if trial is None:
                continue
            if attrs.CELL_KEY not in trial.user_attrs:  # another worker took the last cell in between
                drop(study, trial, None)
                continue
            first = duplicate_of(study, trial)
            if first is None:
                ctx.idle = 0
                return trial
            drop(study, trial, first)
        elif raced:
            if not race_step(ctx):
                return None
        elif not wait_for_running(study):
            return None


def _requeue_dead(ctx: RunContext, trial: optuna.trial.FrozenTrial) -> None:
    """Heartbeat callback: a dead worker's trial is failed in MLflow, with the reason its Optuna trial got, and its
    cell queued again; this worker's output says so."""
    reason = trial.user_attrs.get(attrs.FAIL_REASON) or attrs.STALE
    say(f"trial #{trial.number} ({trial.user_attrs.get(attrs.VARIANT, '?')} s{trial.user_attrs.get(attrs.SEED, '?')}) "
        f"failed: {reason}; its cell is queued again")
    run_id = trial.user_attrs.get(attrs.RUN_ID)
    if run_id:
        ctx.tracker.fail_if_running(run_id, reason)
    if ctx.spec.is_grid:
        enqueue_missing(ctx)
