"""Every Optuna attribute the toolkit writes, named once (``studies.tracking.schema`` does the same for MLflow).

Trial user attrs identify a trial's cell and record what happened to it; study user attrs hold what a rerun or a
worker must find again. The filters every reader shares are here too: a *spurious* trial is a queue race or a
duplicate cell that was stepped over (failed on purpose); reports, counts and races leave it out.
"""
from __future__ import annotations

from typing import Any, Iterable

# ---- trial user attrs -------------------------------------------------------------------------------------------
CELL_KEY = "cell_key"  # the (design, seed) cell a grid trial runs, as a stable key (``studies.run.cells.cell_key``)
VARIANT = "variant"  # the design's readable label, e.g. meta_acon/channel/r16/all
SEED = "seed"  # the cell's seed (the same name as the design axis and the MLflow param)
WORKER = "worker"  # ``host:pid`` of the process that claimed the trial
SPURIOUS = "spurious"  # True: a queue race or a duplicate cell, failed on purpose; never counted
DUPLICATE_OF = "duplicate_of"  # with SPURIOUS: the number of the trial that already has this cell
RETRY_OF = "retry_of"  # a queued cell's earlier failed trial (its number)
RUN_ID = "mlflow_run_id"  # the trial's MLflow child run
FAIL_REASON = "fail_reason"  # why the trial failed, first line first (the run summary shows it)
USER_ERROR = "user_error"  # True: the user must fix something before a rerun (a bad factory, loop or value)

#: The fail reason of a trial Optuna's own heartbeat check failed (it gives none); ours starts with it too.
STALE = "its worker stopped sending heartbeats"

# ---- trial system attrs -----------------------------------------------------------------------------------------
HEARTBEAT = "acon:heartbeat"  # a trial's last heartbeat through the storage proxy (``studies.store.proxy_client``)

# ---- study user attrs -------------------------------------------------------------------------------------------
PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's MLflow parent run
SETTINGS = "settings"  # the resolved settings the study began with (a rerun must match them)
ACON_STUDY = "acon_study"  # the study definition's name (an Optuna study is named STUDY-PRESET)
RACE = "race"  # a race's plan, designs and baseline (``studies.race.record``)


def key_of(trial: Any) -> str | None:
    """The cell key a trial carries (None: a search trial, or one claimed before its cell was queued)."""
    return trial.user_attrs.get(CELL_KEY)


def is_spurious(trial: Any) -> bool:
    """Whether a trial was stepped over on purpose (a queue race or a duplicate cell)."""
    return bool(trial.user_attrs.get(SPURIOUS))


def real(trials: Iterable[Any]) -> list[Any]:
    """The trials that count: every one but the spurious."""
    return [t for t in trials if not is_spurious(t)]
