"""Run a study: Optuna decides what to run next, each trial trains a model, MLflow records it.

The grid studies enqueue every missing (design, seed) cell as a WAITING Optuna trial, then
any number of workers pop and run them; a rerun re-enqueues cells that failed or were cut
off, so it completes the study without duplicating what is done.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.errors import UserError
from studies.interrupt import check, graceful_signals
from studies.settings import Settings
from studies.race_record import RACE_ATTR, race_state
from studies.spec import DESIGN_AXES, NOT_APPLICABLE, Study, load_study, variant_label
from studies.tracking import schema
from studies.outage import WORKER_ATTR, outage_limit, say
from studies.storage import (fail_stale_trials, first_line, heartbeat_interval, open_storage, record_heartbeat,
                             require_existing, resolve_storage, resolve_tracking_uri, storage_file)
from studies.tracking.summary import publish
from studies.tracking.writer import PARENT_ATTR, Tracker
from studies.training.config import check_int
from studies.training.loop import resolve_device
from studies.trial import (TrialContext, axis_choices, cell_key, enqueue_cell, execute_trial, load_data,
                           why_failed)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
RACE_POLL_SECONDS = 1.0
RACE_TAKEOVER = 3  # idle polls after which any worker queues a race's next round
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class RunOptions:
    """How to run a study: preset, setting overrides (None: unset), stores, device; validated by ``resolve``."""

    preset: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    study_name: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    threads: int | None = None
    progress: bool = True
    max_trials: int | None = None
    race: bool = False  # race the designs across seeds (studies.race): --seeds is then the most any design gets
    race_alpha: float = 0.05
    race_test: str = "friedman"
    race_futility: float = 0.2  # conditional power below which a race settles a contest (0: never; studies.race)
    outage_limit: float | str | None = None  # seconds a storage outage is ridden through (None: $ACON_OUTAGE_LIMIT or 5 min)


@dataclass
class StudyRun:
    """What a run did: the Optuna study, the parent MLflow run, and counts by trial state."""

    study: optuna.Study
    parent_run_id: str
    ran: int
    counts: dict[str, int]
    missing: int = 0  # grid cells with no complete or pruned trial (failed ones a rerun retries)
    storage: str = ""  # the Optuna storage URL it used


def run_study(study: Study | str, options: RunOptions | None = None, *, join: bool = False) -> StudyRun:
    """Create or resume ``study`` and run every missing trial in this process.

    ``join=True`` (a worker) only joins a study that already exists and never enqueues
    new grid cells unless they were left failed.
    """
    options = options or RunOptions()
    spec, settings = resolve(study, options)
    load_data(settings["dataset"], options.data_dir, options.download, settings.get("limit"))  # fail before any trial
    session = _open(spec, settings, options, join=join)
    with graceful_signals():
        try:
            ran = _run_loop(session, options)
        except BaseException:
            session.tracker.close_parent("KILLED" if not join else "RUNNING")
            raise
    if not join or _all_done(session):
        publish(session.tracker, spec, settings, session.optuna_study)
        session.tracker.close_parent("FINISHED" if _all_done(session) else "KILLED")
    return _result(session, ran)


def resolve(study: Study | str, options: RunOptions) -> tuple[Study, Settings]:
    """The study with its preset's design cells, and its checked settings; unknown names refused."""
    check_options(options)
    spec = load_study(study) if isinstance(study, str) else study
    spec = spec.for_preset(options.preset)
    settings = spec.settings(options.preset, options.overrides)
    check_names(spec, settings)
    if options.race:  # before any store is opened: a bad race leaves nothing behind
        from studies.race import RacePlan

        if not spec.is_grid:
            raise UserError(f"--race races the design cells of a grid study; {spec.name!r} samples its settings "
                            f"(a search)")
        RacePlan(max_seeds=int(settings["seeds"]), alpha=options.race_alpha, test=options.race_test,
                 futility=options.race_futility)
        if spec.pruner != "none":  # a pruned cell has no final value to rank or pair (studies.race)
            raise UserError(f"--race decides which designs stop, with an error level; {spec.name!r} also prunes "
                            f"(pruner={spec.pruner!r}): race a copy of it with pruner='none'")
    return spec, settings


def check_options(options: RunOptions) -> None:
    """Refuse a bad device (or CUDA where there is none), thread count or trial limit before any store is
    opened: each trial would otherwise fail on it, one after another, and leave a study of failed trials behind."""
    resolve_device(options.device)  # a known name, and CUDA there when asked for
    if options.threads is not None:
        check_int("threads", options.threads, 1)
    if options.max_trials is not None:
        check_int("max_trials", options.max_trials, 0)
    outage_limit(options.outage_limit)  # also checks $ACON_OUTAGE_LIMIT


def optuna_study_name(spec: Study, options: RunOptions) -> str:
    """The Optuna study's name: ``--study-name``, else ``STUDY-PRESET``."""
    return options.study_name or f"{spec.name}-{options.preset}"


def check_names(spec: Study, settings: Settings) -> None:
    """Refuse unknown model, dataset, activation, generator or placement names before anything runs."""
    from ablation import parse_placement, get_generator
    from ablation.models import model_entry
    from acon import get_activation
    from studies.data import DATASETS

    model_entry(settings["model"])
    if isinstance(spec.train, str):  # a training loop by import path: found now, not in every trial
        from studies.custom_loop import resolve_train

        resolve_train(spec.train)
    DATASETS.get(settings["dataset"])
    for design in spec.designs:
        try:
            get_activation(design["activation"])
            if design.get("generator", NOT_APPLICABLE) != NOT_APPLICABLE:
                get_generator(design["generator"])
            if design.get("placement", NOT_APPLICABLE) != NOT_APPLICABLE:
                parse_placement(design["placement"])
        except (KeyError, ValueError) as exc:  # the design cells are user input, checked here at the edge
            raise UserError(f"design {design}: {first_line(exc)}") from exc


def prepare_study(study: Study | str, options: RunOptions | None = None) -> StudyRun:
    """Create or resume ``study`` and its parent run and queue its missing grid cells; run nothing.

    Launchers call it once before starting workers that ``join`` the study.
    """
    options = options or RunOptions()
    spec, settings = resolve(study, options)
    session = _open(spec, settings, options, join=False)
    fail_stale_trials(session.optuna_study, worker_id())
    if spec.is_grid:
        enqueue_missing(session)
    return _result(session, 0)


@dataclass
class _Session:
    spec: Study
    settings: Settings
    optuna_study: optuna.Study
    tracker: Tracker
    ctx: TrialContext
    url: str = ""
    race_tagged: set = field(default_factory=set)  # child runs this process tagged as dropped from the race
    idle: int = 0  # polls this worker waited with nothing to run (a race between rounds)
    failed: set = field(default_factory=set)  # cell keys that failed in this process (a rerun retries them)


def _result(session: _Session, ran: int) -> StudyRun:
    study = session.optuna_study
    return StudyRun(study, session.tracker.parent_id, ran, state_counts(study),
                    missing_cells(study, session.spec, session.settings), session.url)


def _open(spec: Study, settings: Settings, options: RunOptions, *, join: bool) -> _Session:
    name = optuna_study_name(spec, options)
    url = resolve_storage(options.storage, study=name)
    holder: dict[str, _Session] = {}
    if join:  # a worker must not create an empty SQLite or journal file where it expected a study
        require_existing(url)
    created = _new_file(url)
    storage = open_storage(url, outage_limit=options.outage_limit)
    if join and name not in optuna.get_all_study_names(storage):  # before the tracker creates the experiment
        raise UserError(f"no study named {name!r} in this storage; start it with `run_study.py run` first")
    if hasattr(storage, "heartbeat_stale_trial_callback") and storage.get_heartbeat_interval():
        storage.heartbeat_stale_trial_callback = lambda st, t: _requeue_dead(holder["s"], t)
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
    optuna_study = _create_or_load(spec, name, storage, settings, join=join)
    _start_race(spec, settings, options, optuna_study, join)
    parent = optuna_study.user_attrs.get(PARENT_ATTR)
    if join and parent:
        tracker.attach_parent(parent)
    else:
        optuna_study.set_user_attr(PARENT_ATTR, tracker.open_parent(parent, url))
        optuna_study.set_metric_names([spec.metric])
        publish(tracker, spec, settings, optuna_study)
    ctx = TrialContext(spec, settings, tracker, optuna_study, device=options.device, data_dir=options.data_dir,
                       download=options.download, threads=options.threads, progress=options.progress)
    holder["s"] = _Session(spec, settings, optuna_study, tracker, ctx, url)
    return holder["s"]


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
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings.results())
        study.set_user_attr("acon_study", spec.name)
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


def _run_loop(session: _Session, options: RunOptions) -> int:
    study = session.optuna_study
    fail_stale_trials(study, worker_id())
    if session.spec.is_grid:
        enqueue_missing(session)
    limit = options.max_trials
    ran = 0
    # loop until the queue is empty rather than a count fixed up front: cells of dead workers come back
    with session.ctx.progress_bar(_remaining(session) if limit is None else min(limit, _remaining(session))) as bar:
        while limit is None or ran < limit:
            trial = _next_trial(session)
            if trial is None:
                break
            if execute_trial(session.ctx, trial) == TrialState.FAIL:
                session.failed.add(trial.user_attrs.get("cell_key"))  # a race does not queue it again in this run
            ran += 1
            check()
            bar.update(1)
    return ran


def _next_trial(session: _Session) -> optuna.Trial | None:
    """Pop a WAITING cell (grid) or ask the sampler (search); None when nothing is left to run."""
    study = session.optuna_study
    while True:
        fail_stale_trials(study, worker_id())
        if not session.spec.is_grid:
            if _remaining(session) <= 0:
                return None
            trial = _claim(study)
            if trial is not None:
                return trial
            continue
        raced = RACE_ATTR in study.user_attrs
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = _claim(study)
            if trial is None:
                continue
            if "cell_key" not in trial.user_attrs:  # another worker took the last cell in between
                _drop(study, trial, None)
                continue
            first = _duplicate_of(study, trial)
            if first is None:
                session.idle = 0
                return trial
            _drop(study, trial, first)
        elif raced:
            if not _race_step(session):
                return None
        elif not _wait_for_running(study):
            return None


def _race_step(session: _Session) -> bool:
    """A raced study with an empty queue: queue its next round, or wait for the round's running cells; False
    when the race is over. One worker queues a round: the one that ran the round's last trial (the others
    would queue it too, and duplicate its cells, if they all saw the round end at once); another takes over
    after ``RACE_TAKEOVER`` idle polls (that worker died before queueing)."""
    study = session.optuna_study
    if (_race_owner(study) == worker_id() or session.idle >= RACE_TAKEOVER) and enqueue_missing(session):
        session.idle = 0
        return True
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if race_state(study).finished or (not running and session.idle >= RACE_TAKEOVER):
        return False  # over, or stuck on cells that failed here: the summary names them, a rerun retries them
    time.sleep(heartbeat_interval(study) or RACE_POLL_SECONDS)  # others run this round's cells
    check()  # Ctrl-C while waiting stops here
    session.idle += 1
    return True


def _race_owner(study: optuna.Study) -> str | None:
    """The worker that ran the newest finished trial: the one to queue the race's next round."""
    done = [t for t in study.get_trials(deepcopy=False, states=DONE) if not t.user_attrs.get("spurious")]
    return max(done, key=lambda t: t.number).user_attrs.get("worker") if done else None


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs (user attr ``worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(study: optuna.Study) -> optuna.Trial | None:
    """Take the next trial and mark it ours: a first heartbeat at once (so a kill now is noticed) and our id.
    None when another process failed it before it was marked (an orphan or stale judgement during an outage)."""
    with warnings.catch_warnings():  # we record heartbeats ourselves (studies.trial), not through optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    try:
        if heartbeat_interval(study):
            record_heartbeat(study, trial)
        trial.set_user_attr(WORKER_ATTR, worker_id())
    except optuna.exceptions.UpdateFinishedTrialError:
        say(f"trial #{trial.number}: failed by another process as it was claimed here "
            f"({why_failed(study, trial.number)}); stepping over it")
        return None
    return trial


def _duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a trial that already has this cell (done, or running and started first), else None.

    Two workers can enqueue the same failed cell at once. Both sides order running trials the
    same way (start time, then number), so exactly one of two concurrent duplicates steps back.
    """
    key = trial.user_attrs.get("cell_key")
    trials = study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))
    me = next(t for t in trials if t.number == trial.number)
    for t in trials:
        if t.number == me.number or t.user_attrs.get("cell_key") != key or t.user_attrs.get("spurious"):
            continue
        if t.state != TrialState.RUNNING or (t.datetime_start, t.number) < (me.datetime_start, me.number):
            return t.number
    return None


def _drop(study: optuna.Study, trial: optuna.Trial, duplicate_of: int | None) -> None:
    """Fail a trial that must not run (a queue race or a duplicate cell); reports leave it out."""
    trial.set_user_attr("spurious", True)
    if duplicate_of is not None:
        trial.set_user_attr("duplicate_of", duplicate_of)
    study.tell(trial, state=TrialState.FAIL)


def _wait_for_running(study: optuna.Study) -> bool:
    """With heartbeats, wait one interval while others run: a dead one's cell comes back to the queue."""
    interval = heartbeat_interval(study)
    if not interval or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    time.sleep(interval)
    check()  # Ctrl-C while waiting for other workers stops here
    return True


def _remaining(session: _Session) -> int:
    study = session.optuna_study
    if session.spec.is_grid:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    budget = session.settings.get("n_trials") or 1
    return max(0, budget - len(study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))))


def enqueue_missing(session: _Session) -> int:
    """Enqueue every grid cell that has no finished, running or waiting trial; return how many."""
    study = session.optuna_study
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    taken = {t.user_attrs.get("cell_key") for t in study.get_trials(deepcopy=False, states=live)}
    cells = session.spec.cells(session.settings)
    wanted = cells
    state = race_state(study)
    if state is not None:  # a race queues only its current round's cells
        needed = set(state.needed)
        wanted = [c for c in cells if (variant_label(c), c["seed"]) in needed and cell_key(c) not in session.failed]
        _record_race(session, state)
    missing = [c for c in wanted if cell_key(c) not in taken]
    failed = {t.user_attrs.get("cell_key"): t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if not t.user_attrs.get("spurious")}  # the newest failed trial of each cell
    for cell in missing:
        enqueue_cell(study, cell, axis_choices(cells), retry_of=failed.get(cell_key(cell)))
    if missing and session.ctx.bar is not None:
        session.ctx.bar.total = max(session.ctx.bar.total or 0, session.ctx.bar.n + len(missing))
    return len(missing)


def _start_race(spec: Study, settings: Settings, options: RunOptions, study: optuna.Study, join: bool) -> None:
    """Record a race's plan on the study (``run --race``), or bring a recorded one's seed budget up to date."""
    from studies.race import RacePlan
    from studies.race_record import record, unpack

    recorded = study.user_attrs.get(RACE_ATTR)
    if recorded is None and not (options.race and not join):
        return
    seeds = int(settings["seeds"])
    if recorded is None:
        plan = RacePlan(max_seeds=seeds, alpha=options.race_alpha, test=options.race_test, direction=spec.direction,
                        futility=options.race_futility)
        cells = spec.cells(settings)
        designs = list(dict.fromkeys(variant_label(c) for c in cells))
        baseline = next((variant_label(c) for c in cells if c["activation"] == "relu"), None)
        study.set_user_attr(RACE_ATTR, record(plan, designs, baseline))
    elif recorded["max_seeds"] != seeds and not join:  # more --seeds: a bigger budget for the same race
        plan, designs, baseline = unpack(recorded)
        study.set_user_attr(RACE_ATTR, record(dataclasses.replace(plan, max_seeds=seeds), designs, baseline))


def _record_race(session: _Session, state) -> None:
    """The race on MLflow: the plan and its status on the parent run, each drop on the parent and on the dropped
    design's child runs (round, p-value, the design it lost to)."""
    from studies import race_record as racing

    tracker, study = session.tracker, session.optuna_study
    tags = {**racing.plan_tags(*racing.unpack(study.user_attrs[RACE_ATTR])), racing.STATUS_TAG: racing.describe_state(state),
            racing.ANSWER_TAG: " | ".join(racing.describe_answer(state.answer()))[:5000]}
    for label, drop in state.dropped.items():
        tags[f"{racing.DROPPED_TAG}.{label.replace('/', '.')}"] = racing.describe_drop(drop)
    tracker.tag(tracker.parent_id, tags)
    for t in study.get_trials(deepcopy=False):
        drop = state.dropped.get(t.user_attrs.get("variant"))
        run_id = t.user_attrs.get(schema.RUN_ID_ATTR)
        if drop is not None and run_id and run_id not in session.race_tagged:
            tracker.tag(run_id, {racing.DROPPED_TAG: racing.describe_drop(drop)})
            session.race_tagged.add(run_id)


def missing_cells(study: optuna.Study, spec: Study, settings: Settings) -> int:
    """Grid cells of ``spec`` with no COMPLETE or PRUNED trial in ``study`` (a race: the cells it still needs);
    0 for search studies."""
    if not spec.is_grid:
        return 0
    state = race_state(study)
    if state is not None:
        return len(state.needed)
    done = {t.user_attrs.get("cell_key") for t in study.get_trials(deepcopy=False, states=DONE)}
    return sum(cell_key(c) not in done for c in spec.cells(settings))


def _requeue_dead(session: _Session, trial: optuna.trial.FrozenTrial) -> None:
    """Heartbeat callback: a dead worker's trial is failed in MLflow, with the reason its Optuna trial got, and its
    cell queued again; this worker's output says so."""
    reason = trial.user_attrs.get(schema.FAIL_REASON_ATTR) or schema.STALE
    say(f"trial #{trial.number} ({trial.user_attrs.get('variant', '?')} s{trial.user_attrs.get('seed', '?')}) "
        f"failed: {reason}; its cell is queued again")
    run_id = trial.user_attrs.get(schema.RUN_ID_ATTR)
    if run_id:
        session.tracker.fail_if_running(run_id, reason)
    if session.spec.is_grid:
        enqueue_missing(session)


def _all_done(session: _Session) -> bool:
    return _remaining(session) == 0 and not session.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name, spurious queue races left out."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("spurious"):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts

