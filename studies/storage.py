"""Where studies are stored: Optuna storage and MLflow tracking URIs, defaults and checks.

Defaults are files in the working directory (``optuna.db``, ``mlflow.db``); the flags
``--storage`` / ``--tracking-uri`` and the environment variables ``ACON_STORAGE`` /
``MLFLOW_TRACKING_URI`` override them. URLs are masked before they are logged or printed.
"""
from __future__ import annotations

import os
import re

import optuna

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "ACON_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: Seconds between trial heartbeats (RDB storages), and how long a silent trial lives;
#: ``$ACON_HEARTBEAT_INTERVAL`` / ``$ACON_HEARTBEAT_GRACE`` override them (tests use small values).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
HEARTBEAT_ENV, GRACE_ENV = "ACON_HEARTBEAT_INTERVAL", "ACON_HEARTBEAT_GRACE"


class StorageError(RuntimeError):
    """A storage or tracking store that cannot be reached or used."""


def resolve_storage(url: str | None = None) -> str:
    """The Optuna storage URL: the argument, else ``$ACON_STORAGE``, else ``sqlite:///optuna.db``."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI: the argument, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get(TRACKING_ENV) or DEFAULT_TRACKING_URI


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` URLs."""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", url)


def is_journal(url: str) -> bool:
    """True for a journal-file storage (``journal:///path`` or a path ending in ``.journal``)."""
    return url.startswith("journal:") or url.endswith(".journal")


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open an Optuna storage; RDB storages get heartbeats so dead workers' trials are failed."""
    kwargs = heartbeat_settings() if heartbeat else {}
    try:
        if is_journal(url):
            backend = optuna.storages.journal.JournalFileBackend(_journal_path(url))
            return optuna.storages.JournalStorage(backend)
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except Exception as exc:  # SQLAlchemy / driver errors vary by backend
        raise StorageError(f"cannot open Optuna storage {mask_url(url)}: {first_line(exc)}") from exc


def heartbeat_settings() -> dict[str, int]:
    """``heartbeat_interval`` and ``grace_period`` in seconds, from the environment or the defaults."""
    interval = _positive_env(HEARTBEAT_ENV, HEARTBEAT_INTERVAL)
    grace = _positive_env(GRACE_ENV, max(GRACE_PERIOD, 3 * interval))
    if grace <= interval:
        raise ValueError(f"{GRACE_ENV}={grace} must be longer than {HEARTBEAT_ENV}={interval}, "
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
        raise ValueError(f"{name} must be a whole number of seconds >= 1, got {raw!r}")
    return value


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


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # wait for a lock instead of failing at once when the MLflow UI or a reader holds it
        return {"connect_args": {"timeout": 30}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (a KeyError's quotes removed)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
