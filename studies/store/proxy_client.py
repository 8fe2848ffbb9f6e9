"""The workers' side of the gRPC storage proxy: ``--storage grpc://HOST:PORT`` (``studies.store.proxy`` serves it).

Optuna's ``GrpcStorageProxy`` with heartbeats added: Optuna's proxy has no heartbeat call, so a trial's beat is a
trial system attr that goes through any proxy. Opened through ``studies.store.storage.open_storage``, it rides a
proxy restart as an RDB storage rides a database restart (``studies.store.outage``).
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable
from urllib.parse import urlsplit

from optuna.exceptions import ExperimentalWarning
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from studies.errors import UserError
from studies.store import attrs

SCHEME = "grpc://"
#: Seconds a new client waits for the proxy to answer before it says it cannot reach it (``$ACON_PROXY_WAIT``): on a
#: cluster the proxy's task and the workers' start together, and a loaded node takes seconds to answer.
CONNECT_TIMEOUT, WAIT_ENV = 30.0, "ACON_PROXY_WAIT"
INSTALL_HINT = "the gRPC storage proxy needs grpcio and protobuf: pip install 'acon-ablation[cluster]'"


class ProxyUnreachable(UserError, RuntimeError):
    """No storage proxy answers at the URL a worker was given."""


def is_proxy(url: str) -> bool:
    """True for a storage reached through the gRPC proxy (``grpc://HOST:PORT``)."""
    return url.startswith(SCHEME)


def proxy_address(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` -> (host, port); anything else is refused with the form it takes."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise UserError(f"a storage proxy URL is grpc://HOST:PORT (where `run_study.py storage-proxy` listens), "
                        f"got {url!r}")
    return parts.hostname, port


#: gRPC's own reconnect backoff grows to 120 s: after a proxy restart one worker's channel could wait a minute to
#: reconnect while another, reconnected, judged its trial stale. Capped here near ``outage.BACKOFF_MAX``.
RECONNECT_MS = {"grpc.initial_reconnect_backoff_ms": 250, "grpc.max_reconnect_backoff_ms": 2000}
#: Seconds between keepalive pings, and to wait for their answer: Optuna's calls have no deadline, so a connection
#: cut silently (a node gone, a dropped route) would hang a worker forever; a ping not answered fails the calls in
#: flight UNAVAILABLE, which the worker rides as any outage. The proxy lets pings come this often.
KEEPALIVE_S = 10.0


def channel_options(keepalive: float = KEEPALIVE_S) -> list[tuple[str, int]]:
    """The options of a worker's channel to the proxy (Optuna's, plus bounded reconnects and keepalive)."""
    ms = max(1, round(keepalive * 1000))
    return [("grpc.max_receive_message_length", -1), *RECONNECT_MS.items(), ("grpc.keepalive_time_ms", ms),
            ("grpc.keepalive_timeout_ms", ms), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]


class ProxyStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC client with heartbeats: a trial's beat is its ``acon:heartbeat`` system attr on the worker's
    clock, stale when older than ``grace_period`` on the judging worker's clock (the machines' clocks must agree
    well within the grace, as NTP keeps them). Its channel reconnects within 2 s of a restarted proxy and finds a
    silent one within ``2 * keepalive`` s (``channel_options``)."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, keepalive: float = KEEPALIVE_S):
        self.keepalive = keepalive
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2: we pin its use in our tests instead
            warnings.filterwarnings("ignore", category=ExperimentalWarning)
            super().__init__(host=host, port=port)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

    def _setup(self) -> None:
        # Optuna's ``_setup`` with our channel options (its channel takes none but the message size)
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=channel_options(self.keepalive))
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, attrs.HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # a trial that never beat is not stale (as in Optuna's RDB storage): ``ResilientStorage.orphans`` finds those
        oldest = time.time() - float(self.grace_period or 2 * (self.heartbeat_interval or 0))
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if t.system_attrs.get(attrs.HEARTBEAT, oldest) < oldest]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return None  # the toolkit's is set on the ``ResilientStorage`` that wraps this one


def open_proxy(url: str, *, timeout: float | None = None, **options: Any) -> ProxyStorage:
    """A client of the proxy at ``grpc://HOST:PORT`` once it answers (within ``timeout`` s, default ``$ACON_PROXY_WAIT``
    or 30, else a one-line error that says what was tried). ``options``: ``heartbeat_interval`` and
    ``grace_period``, as for an RDB storage; ``keepalive`` seconds (``ProxyStorage``)."""
    host, port = proxy_address(url)
    require_grpc()
    timeout = connect_timeout() if timeout is None else timeout
    storage = ProxyStorage(host=host, port=port, **options)
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError:
        storage.close()
        raise ProxyUnreachable(f"no Optuna storage proxy answers at {url} (tried for {timeout:g} s); start one there "
                               f"with `run_study.py storage-proxy --storage DATABASE_URL --host {host} --port {port}`"
                               ) from None
    return storage


def connect_timeout() -> float:
    """``$ACON_PROXY_WAIT`` seconds (> 0), else 30."""
    raw = os.environ.get(WAIT_ENV) or CONNECT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise UserError(f"{WAIT_ENV} takes seconds > 0, got {raw!r}")
    return seconds


def require_grpc() -> None:
    """Refuse, in one line that says what to install, where grpcio or protobuf is missing."""
    try:
        import grpc  # noqa: F401
        from google import protobuf  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None
