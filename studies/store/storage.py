"""Where studies are stored: Optuna storage and MLflow tracking URIs, defaults and checks.

Defaults are files in the working directory (``optuna.db``, or ``optuna.journal`` for several
workers; ``mlflow.db``); the flags ``--storage`` / ``--tracking-uri`` and the environment variables
``ACON_STORAGE`` / ``MLFLOW_TRACKING_URI`` override them. URLs are masked before they are logged or printed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
from optuna.storages._cached_storage import _CachedStorage  # what optuna.create_study wraps an RDB in

from studies.errors import UserError, first_line
from studies.store import attrs

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_JOURNAL = "optuna.journal"  # the default for several workers: a journal file takes several writers
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "ACON_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: Seconds between trial heartbeats (RDB storages), and how long a silent trial lives;
#: ``$ACON_HEARTBEAT_INTERVAL`` / ``$ACON_HEARTBEAT_GRACE`` override them (tests use small values).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
HEARTBEAT_ENV, GRACE_ENV = "ACON_HEARTBEAT_INTERVAL", "ACON_HEARTBEAT_GRACE"


class StorageError(UserError, RuntimeError):
    """A storage or tracking store that cannot be reached or used."""


def resolve_storage(url: str | None = None, *, study: str | None = None, workers: int = 1) -> str:
    """The Optuna storage URL: the argument, else ``$ACON_STORAGE``, else a default file of this directory.

    The default is the file that already holds ``study`` (``optuna.db`` or ``optuna.journal``, so a
    rerun resumes whatever the worker count); a new study goes to SQLite for one worker and to the
    journal file for several (SQLite takes one writer).
    """
    if url or os.environ.get(STORAGE_ENV):
        return url or os.environ[STORAGE_ENV]
    journal = f"journal://{Path(DEFAULT_JOURNAL).resolve()}"
    preferred = (journal, DEFAULT_STORAGE) if workers > 1 else (DEFAULT_STORAGE, journal)
    held = [u for u in preferred if study is not None and holds_study(u, study)]
    return held[0] if held else preferred[0]


def holds_study(url: str, study: str) -> bool:
    """True if the existing file storage ``url`` holds an Optuna study named ``study`` (never creates a file)."""
    path = storage_file(url)
    if path is None or not os.path.exists(path):
        return False
    return study in optuna.get_all_study_names(open_storage(url, heartbeat=False))


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI: the argument, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get(TRACKING_ENV) or DEFAULT_TRACKING_URI


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` URLs."""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", url)


def is_journal(url: str) -> bool:
    """True for a journal-file storage (``journal:///path`` or a path ending in ``.journal``)."""
    return url.startswith("journal:") or url.endswith(".journal")


def open_storage(url: str, *, heartbeat: bool = True, outage_limit: float | str | None = None,
                 ride_outages: bool = True) -> optuna.storages.BaseStorage:
    """Open an Optuna storage; RDB storages and the storage proxy get heartbeats so dead workers' trials are failed.

    A database server's storage, or its proxy (``grpc://HOST:PORT``, ``studies.store.proxy_client``), rides through
    outages up to ``outage_limit`` seconds (``studies.store.outage``; default ``$ACON_OUTAGE_LIMIT`` or 5 min) once it
    is open (``ride_outages=False``: its errors are raised at once, as the proxy's own database storage does). Opening
    it does not wait: a server that cannot be reached at the start is more often a wrong URL than an outage, and says
    so in one line at once.
    """
    from studies.store.outage import ResilientStorage, outage_limit as limit_of
    from studies.store.proxy_client import is_proxy, open_proxy

    kwargs = heartbeat_settings() if heartbeat else {}
    try:
        if is_journal(url):
            backend = optuna.storages.journal.JournalFileBackend(_journal_path(url))
            return optuna.storages.JournalStorage(backend)
        if url.startswith("sqlite"):  # a local file: no server to lose, and its errors are not outages
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url, 0), **kwargs)
        limit = limit_of(outage_limit)
        if is_proxy(url):
            backend = open_proxy(url, **kwargs)
        else:
            backend = _CachedStorage(optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url, limit), **kwargs))
        return ResilientStorage(backend, limit=limit, name=mask_url(url)) if ride_outages else backend
    except UserError:
        raise
    except Exception as exc:  # SQLAlchemy / driver errors vary by backend
        raise StorageError(f"cannot open Optuna storage {mask_url(url)}: {first_line(exc)}") from exc


def heartbeat_settings() -> dict[str, int]:
    """``heartbeat_interval`` and ``grace_period`` in seconds, from the environment or the defaults."""
    interval = _positive_env(HEARTBEAT_ENV, HEARTBEAT_INTERVAL)
    grace = _positive_env(GRACE_ENV, max(GRACE_PERIOD, 3 * interval))
    if grace <= interval:
        raise UserError(f"{GRACE_ENV}={grace} must be longer than {HEARTBEAT_ENV}={interval}, "
                         f"or live trials would be failed between two heartbeats")
    return {"heartbeat_interval": interval, "grace_period": grace}


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name} must be a whole number of seconds >= 1, got {raw!r}")
    return value


# Optuna keeps a study's storage and a trial's storage id private, with no getter; its own
# ``Study.optimize`` hands the same two to its heartbeat thread. The three things below need them
# (heartbeats of trials run outside ``optimize``, a note on a trial another process runs), so the
# private access lives here and nowhere else.
def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage; None where it has none (journal, in-memory)."""
    storage = study._storage  # RDBStorage wrapped in a cache, hence no isinstance check
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Tell the storage that ``trial`` is alive (RDB storages with heartbeats only)."""
    study._storage.record_heartbeat(trial._trial_id)


def deferring(study: optuna.Study):
    """A block whose storage calls raise ``StorageDown`` at once during an outage instead of waiting for the
    storage (a trial's epoch reports: training goes on, they are written when it is back)."""
    import contextlib

    storage = study._storage
    return storage.deferring() if hasattr(storage, "deferring") else contextlib.nullcontext()


def fail_stale_trials(study: optuna.Study, judge: str) -> list[int]:
    """Optuna's ``fail_stale_trials`` that says why: each RUNNING trial whose heartbeat went stale gets its
    ``fail_reason`` (who failed it, when, after what silence) before it is failed, since a finished trial takes
    no attribute; then the storage's stale-trial callback runs for each. Returns the numbers it failed."""
    from datetime import datetime

    storage = study._storage
    if not heartbeat_interval(study):
        return []
    grace = getattr(storage, "grace_period", None) or 2 * heartbeat_interval(study)
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            user = storage.get_trial(trial_id).user_attrs
            worker = user.get(attrs.WORKER, "its worker")
            if not user.get(attrs.FAIL_REASON):  # an orphan says its own
                storage.set_trial_user_attr(trial_id, attrs.FAIL_REASON, (
                    f"{attrs.STALE}: no heartbeat from {worker} for over the {grace} s grace (killed, crashed, or cut "
                    f"off from the storage); failed by {judge} at {datetime.now():%H:%M:%S}"))
            if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # it finished (its result arrived, or another process failed it) in between
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        trial = storage.get_trial(trial_id)
        numbers.append(trial.number)
        if callback is not None:
            callback(study, trial)
    return numbers


def note_on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: str) -> None:
    """Set a user attr on a trial that another process is running (``Trial.set_user_attr`` needs the live trial)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def require_existing(url: str) -> None:
    """Refuse a file storage (SQLite or journal) that does not exist, instead of creating an empty one."""
    path = storage_file(url)
    if path is not None and not os.path.exists(path):
        raise StorageError(f"no Optuna storage at {path}; start the study there with `run_study.py run` first")


def storage_file(url: str) -> str | None:
    """The local file behind a SQLite or journal storage URL, else None (a database server)."""
    if is_journal(url):
        return _journal_path(url)
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):].split("?", 1)[0]
        return None if rest in ("", ":memory:") else rest
    return None


def _journal_path(url: str) -> str:
    path = url.split(":", 1)[1].lstrip("/") if url.startswith("journal:") else url
    return "/" + path if url.startswith("journal:///") else path


def _engine_kwargs(url: str, limit: float) -> dict:
    if url.startswith("sqlite"):
        # wait for a lock instead of failing at once when the MLflow UI or a reader holds it
        return {"connect_args": {"timeout": 30}}
    if url.startswith("postgresql"):
        # a connection is checked before use (a restarted server's are dead), and a connection to a server
        # that stopped answering (a dropped network) fails within seconds instead of TCP's many minutes
        return {"connect_args": postgres_timeouts(limit), "pool_pre_ping": True}
    return {}


def postgres_timeouts(limit: float) -> dict[str, int]:
    """libpq's connection settings that make a silent network fail a call well inside the outage ``limit``
    (``studies.store.outage.attempt_timeouts``): connect timeout, TCP keepalives and TCP user timeout."""
    from studies.store.outage import attempt_timeouts, outage_limit

    connect, user = attempt_timeouts(limit or outage_limit())
    return {"connect_timeout": connect, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3, "tcp_user_timeout": user}
