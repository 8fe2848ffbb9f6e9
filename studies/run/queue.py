"""The trial queue a study's processes share: claim the next trial, step over duplicates and queue races, queue the
cells still missing (a race: only its current round's), and requeue a dead worker's cell."""
from __future__ import annotations

import os
import socket
import time
import warnings

import optuna
from optuna.trial import TrialState

from studies.race import record as racing
from studies.run.cells import axis_choices, cell_key, enqueue_cell
from studies.run.context import RunContext
from studies.run.interrupt import check
from studies.settings import Settings
from studies.spec import Study, variant_label
from studies.store import attrs
from studies.store.outage import say
from studies.store.storage import heartbeat_interval, record_heartbeat
from studies.tracking.summary import fail_reason

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs (user attr ``worker``); in a SLURM job array
    ``host:pid slurm:JOB_TASK``, so a launcher can tell which task's trials to fail (``studies.run.slurm``)."""
    wid = f"{socket.gethostname()}:{os.getpid()}"
    task = slurm_task_id()
    return f"{wid} slurm:{task}" if task else wid


def slurm_task_id() -> str | None:
    """The SLURM job this process runs in, as submitit and ``squeue`` name it: ``JOB_TASK`` in a job array, ``JOB``
    alone (submitit submits a single task as a plain job); None outside SLURM."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take the next trial and mark it ours: a first heartbeat at once (so a kill now is noticed) and our id.
    None when another process failed it before it was marked (an orphan or stale judgement during an outage)."""
    with warnings.catch_warnings():  # we record heartbeats ourselves (studies.run.trial), not through optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    try:
        if heartbeat_interval(study):
            record_heartbeat(study, trial)
        trial.set_user_attr(attrs.WORKER, worker_id())
    except optuna.exceptions.UpdateFinishedTrialError:
        say(f"trial #{trial.number}: failed by another process as it was claimed here "
            f"({why_failed(study, trial.number)}); stepping over it")
        return None
    return trial


def duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a trial that already has this cell (done, or running and started first), else None.

    Two workers can enqueue the same failed cell at once. Both sides order running trials the
    same way (start time, then number), so exactly one of two concurrent duplicates steps back.
    """
    key = attrs.key_of(trial)
    trials = study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))
    me = next(t for t in trials if t.number == trial.number)
    for t in trials:
        if t.number == me.number or attrs.key_of(t) != key or attrs.is_spurious(t):
            continue
        if t.state != TrialState.RUNNING or (t.datetime_start, t.number) < (me.datetime_start, me.number):
            return t.number
    return None


def drop(study: optuna.Study, trial: optuna.Trial, duplicate_of: int | None) -> None:
    """Fail a trial that must not run (a queue race or a duplicate cell); reports leave it out."""
    trial.set_user_attr(attrs.SPURIOUS, True)
    if duplicate_of is not None:
        trial.set_user_attr(attrs.DUPLICATE_OF, duplicate_of)
    study.tell(trial, state=TrialState.FAIL)


def wait_for_running(study: optuna.Study) -> bool:
    """With heartbeats, wait one interval while others run: a dead one's cell comes back to the queue."""
    interval = heartbeat_interval(study)
    if not interval or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    time.sleep(interval)
    check()  # Ctrl-C while waiting for other workers stops here
    return True


def remaining(ctx: RunContext) -> int:
    study = ctx.study
    if ctx.spec.is_grid:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    budget = ctx.settings.get("n_trials") or 1
    return max(0, budget - len(study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))))


def enqueue_missing(ctx: RunContext) -> int:
    """Enqueue every grid cell that has no finished, running or waiting trial; return how many."""
    study = ctx.study
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    taken = {attrs.key_of(t) for t in study.get_trials(deepcopy=False, states=live)}
    cells = ctx.spec.cells(ctx.settings)
    wanted = cells
    state = racing.race_state(study)
    if state is not None:  # a race queues only its current round's cells
        needed = set(state.needed)
        wanted = [c for c in cells if (variant_label(c), c["seed"]) in needed and cell_key(c) not in ctx.failed]
        record_race(ctx, state)
    missing = [c for c in wanted if cell_key(c) not in taken]
    failed = {attrs.key_of(t): t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if not attrs.is_spurious(t)}  # the newest failed trial of each cell
    for cell in missing:
        enqueue_cell(study, cell, axis_choices(cells), retry_of=failed.get(cell_key(cell)))
    if missing and ctx.bar is not None:
        ctx.bar.total = max(ctx.bar.total or 0, ctx.bar.n + len(missing))
    return len(missing)


def record_race(ctx: RunContext, state) -> None:
    """The race on MLflow: the plan and its status on the parent run, each drop on the parent and on the dropped
    design's child runs (round, p-value, the design it lost to)."""
    tracker, study = ctx.tracker, ctx.study
    tags = {**racing.plan_tags(*racing.unpack(study.user_attrs[attrs.RACE])), racing.STATUS_TAG: racing.describe_state(state),
            racing.ANSWER_TAG: " | ".join(racing.describe_answer(state.answer()))[:5000]}
    for label, drop in state.dropped.items():
        tags[f"{racing.DROPPED_TAG}.{label.replace('/', '.')}"] = racing.describe_drop(drop)
    tracker.tag(tracker.parent_id, tags)
    for t in study.get_trials(deepcopy=False):
        drop = state.dropped.get(t.user_attrs.get(attrs.VARIANT))
        run_id = t.user_attrs.get(attrs.RUN_ID)
        if drop is not None and run_id and run_id not in ctx.race_tagged:
            tracker.tag(run_id, {racing.DROPPED_TAG: racing.describe_drop(drop)})
            ctx.race_tagged.add(run_id)


def missing_cells(study: optuna.Study, spec: Study, settings: Settings) -> int:
    """Grid cells of ``spec`` with no COMPLETE or PRUNED trial in ``study`` (a race: the cells it still needs);
    0 for search studies."""
    if not spec.is_grid:
        return 0
    state = racing.race_state(study)
    if state is not None:
        return len(state.needed)
    done = {attrs.key_of(t) for t in study.get_trials(deepcopy=False, states=DONE)}
    return sum(cell_key(c) not in done for c in spec.cells(settings))


def all_done(ctx: RunContext) -> bool:
    return remaining(ctx) == 0 and not ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name, spurious queue races left out."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not attrs.is_spurious(t):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def why_failed(study: optuna.Study, number: int) -> str:
    """The first line of why trial ``number`` failed (read back: another process may have failed it)."""
    return fail_reason(study.get_trials(deepcopy=False)[number])
