"""A raced study's rounds (``run --race``): its plan recorded on the Optuna study once, the next round queued by one
worker when the last one ends, the others waiting. What a round decides is ``studies.race.procedure``."""
from __future__ import annotations

import dataclasses
import time

import optuna
from optuna.trial import TrialState

from studies.race.record import race_state, record, unpack
from studies.run.context import RunContext
from studies.run.interrupt import check
from studies.run.queue import DONE, enqueue_missing, worker_id
from studies.spec import variant_label
from studies.store import attrs
from studies.store.storage import heartbeat_interval

RACE_POLL_SECONDS = 1.0
RACE_TAKEOVER = 3  # idle polls after which any worker queues a race's next round


def race_step(ctx: RunContext) -> bool:
    """A raced study with an empty queue: queue its next round, or wait for the round's running cells; False
    when the race is over. One worker queues a round: the one that ran the round's last trial (the others
    would queue it too, and duplicate its cells, if they all saw the round end at once); another takes over
    after ``RACE_TAKEOVER`` idle polls (that worker died before queueing)."""
    study = ctx.study
    if (race_owner(study) == worker_id() or ctx.idle >= RACE_TAKEOVER) and enqueue_missing(ctx):
        ctx.idle = 0
        return True
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if race_state(study).finished or (not running and ctx.idle >= RACE_TAKEOVER):
        return False  # over, or stuck on cells that failed here: the summary names them, a rerun retries them
    time.sleep(heartbeat_interval(study) or RACE_POLL_SECONDS)  # others run this round's cells
    check()  # Ctrl-C while waiting stops here
    ctx.idle += 1
    return True


def race_owner(study: optuna.Study) -> str | None:
    """The worker that ran the newest finished trial: the one to queue the race's next round."""
    done = attrs.real(study.get_trials(deepcopy=False, states=DONE))
    return max(done, key=lambda t: t.number).user_attrs.get(attrs.WORKER) if done else None


def start_race(ctx: RunContext, *, join: bool) -> None:
    """Record the race's plan on the study (``run --race``; built once, by ``resolve``), or bring a recorded race's
    seed budget up to date (more ``--seeds``: a bigger budget for the same race)."""
    study, plan, seeds = ctx.study, ctx.resolved.race, int(ctx.settings["seeds"])
    recorded = study.user_attrs.get(attrs.RACE)
    if join:
        return
    if recorded is None and plan is not None:
        cells = ctx.spec.cells(ctx.settings)
        designs = list(dict.fromkeys(variant_label(c) for c in cells))
        baseline = next((variant_label(c) for c in cells if c["activation"] == "relu"), None)
        study.set_user_attr(attrs.RACE, record(plan, designs, baseline))
    elif recorded is not None and recorded["max_seeds"] != seeds:
        plan, designs, baseline = unpack(recorded)
        study.set_user_attr(attrs.RACE, record(dataclasses.replace(plan, max_seeds=seeds), designs, baseline))
