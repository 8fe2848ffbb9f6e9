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
#: Seconds between trial heartbeats (RDB storages), and how long a silent trial lives.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30


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
    try:
        if is_journal(url):
            path = url.split(":", 1)[1].lstrip("/") if url.startswith("journal:") else url
            path = "/" + path if url.startswith("journal:///") else path
            backend = optuna.storages.journal.JournalFileBackend(path)
            return optuna.storages.JournalStorage(backend)
        kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD} if heartbeat else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except Exception as exc:  # SQLAlchemy / driver errors vary by backend
        raise StorageError(f"cannot open Optuna storage {mask_url(url)}: {_first_line(exc)}") from exc


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # wait for a lock instead of failing at once when the MLflow UI or a reader holds it
        return {"connect_args": {"timeout": 30}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
