"""Ride through storage outages: a database restart is weather, not the end of a study.

``ResilientStorage`` wraps an Optuna RDB storage on a database server. Every call that fails because the
server cannot be reached (a restart, a failover, a dropped network) is retried with backoff until the
outage has lasted ``limit`` seconds (``--outage-limit``, ``$ACON_OUTAGE_LIMIT``, default 5 min); past it,
``StorageUnavailable`` (a one-line user error: nothing is lost, a rerun resumes). Connections are checked
before use (``pool_pre_ping``, ``studies.store.storage``).

A retried write must not be applied twice. The reply of a write can be lost after the server committed
it, so before retrying a trial's state change the wrapper reads the trial: a result already recorded is
not told again, and a trial finished meanwhile by another process (its heartbeat went stale) raises
``UpdateFinishedTrialError``, which the trial turns into a "late result" (``studies.run.trial``). The other
writes are upserts (attributes, intermediate values, heartbeats), safe to repeat. A new trial whose reply
was lost may exist twice: a queued cell's copy is dropped as a duplicate (``studies.run.launch``), and a
RUNNING trial nobody claimed is failed as an orphan (``orphans``).

Heartbeats: a process that was itself cut off from the storage within the last grace period (and one
backoff step) does not fail other workers' trials as stale. After an outage every heartbeat in the
database is old, and the first worker back would otherwise fail every live trial of the others.

Each outage prints one line when it begins and one when it ends, whichever thread saw it.
``RetryingClient`` does the same for an MLflow client on a database tracking store.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from studies.errors import UserError, first_line
from studies.store import attrs

OUTAGE_ENV = "ACON_OUTAGE_LIMIT"
OUTAGE_LIMIT = 300.0  # seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 2.0
#: In ``deferring`` mode, how long after a failed attempt the next one is tried (not each epoch).
DEFER_RETRY = 2.0


class StorageUnavailable(UserError, RuntimeError):
    """The storage stayed unreachable longer than the outage limit."""


class StorageDown(Exception):
    """The storage is unreachable right now (raised instead of waiting, inside ``deferring``)."""


def outage_limit(value: float | str | None = None) -> float:
    """Seconds an outage is ridden through: ``value``, else ``$ACON_OUTAGE_LIMIT``, else 300.

    Takes seconds (``90``) or a unit (``90s``, ``5m``, ``1h``); refuses anything that is not > 0.
    """
    raw = value if value is not None else os.environ.get(OUTAGE_ENV) or OUTAGE_LIMIT
    where = "--outage-limit" if value is not None else OUTAGE_ENV
    text = str(raw).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UserError(f"{where} takes a duration > 0 in seconds, or with a unit (90s, 5m, 1h); got {raw!r}")
    return seconds


def attempt_timeouts(limit: float) -> tuple[int, int]:
    """(connect timeout in s, TCP user timeout in ms) of one attempt to reach a database server, so that a silent
    network (a partition: no reset, no answer) fails a call instead of hanging it, well inside the outage limit:
    10 s to connect and 30 s for unacknowledged data, at most a third of the limit each (at least 1 s / 2 s)."""
    return int(min(10, max(1, limit // 3))), int(1000 * min(30, max(2, limit // 3)))


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says the database or its storage proxy could not be reached, not that a
    call was wrong: a driver's connection error, or a gRPC call answered UNAVAILABLE (the proxy is down, or answers
    that its database is) or DEADLINE_EXCEEDED."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, ConnectionError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if _grpc_code(exc) in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _grpc_code(exc: BaseException) -> str | None:
    """The status code name of a failed gRPC call, else None (grpc is not imported unless a proxy is used)."""
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(exc, grpc.RpcError) or not callable(getattr(exc, "code", None)):
        return None
    return getattr(exc.code(), "name", None)


def describe_failure(exc: BaseException) -> str:
    """The most specific message in ``exc``'s chain: the driver's (``connection refused``), not SQLAlchemy's; a gRPC
    call's code and details (``UNAVAILABLE: failed to connect ...``)."""

    messages, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = _grpc_code(exc)
        text = f"{code}: {exc.details()}" if code else first_line(exc)
        if str(exc).strip() not in ("", "()"):
            messages.append(text.split(") ", 1)[1] if text.startswith("(") and ") " in text else text)
        exc = exc.__cause__ or exc.__context__
    return (messages[-1] if messages else "no answer")[:160]


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def say(line: str) -> None:
    """One line on stderr that leaves a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class _Outage:
    """The storage's reachability as this process saw it, shared by its threads."""

    def __init__(self, limit: float, name: str, what: str = "Optuna storage"):
        self.limit, self.name, self.what = limit, name, what
        self.lock = threading.Lock()
        self.since: float | None = None  # wall time of the first failed call of the current outage
        self.ended = float("-inf")  # monotonic time the last outage ended
        self.tried = float("-inf")  # monotonic time of the last failed attempt
        self.reached = time.monotonic()  # monotonic time of the last call that reached the storage (or our start)

    def failed(self, exc: BaseException, began: float) -> float:
        """Record a failed call that began at wall time ``began``; return the wall time the outage began (the start
        of its first failed call: a silent network fails a call only after its timeout, and that counts too)."""
        with self.lock:
            self.tried = time.monotonic()
            if self.since is None:
                self.since = min(began, time.time())
                say(f"{self.label} unreachable since {_clock(self.since)}, retrying for up to {_duration(self.limit)} "
                    f"({self.name}: {describe_failure(exc)})")
            return self.since

    def succeeded(self) -> None:
        if self.since is None:  # the common case, without the lock
            return
        with self.lock:
            if self.since is not None:
                say(f"{self.label} reachable again at {_clock(time.time())}, after {_duration(time.time() - self.since)}")
                self.since, self.ended = None, time.monotonic()

    @property
    def label(self) -> str:
        """``storage`` (Optuna's) or ``tracking store`` (MLflow's), as the outage lines say it."""
        return "storage" if self.what == "Optuna storage" else "tracking store"

    def down(self) -> bool:
        return self.since is not None

    def silent_for(self) -> float:
        """Seconds since a call of this process last reached the storage: an outage wholly within them went unseen."""
        return time.monotonic() - self.reached

    def quiet_for(self) -> float:
        """Seconds since this process last saw the storage unreachable (0 during an outage)."""
        return 0.0 if self.since is not None else time.monotonic() - self.ended

    def ride(self, call: Callable[[], Any], *, check: Callable[[], Any] | None = None, defer: bool = False,
             reaches: bool = True) -> Any:
        """``call()``, retried with backoff while the database is unreachable, up to the limit.

        ``check``, run before a retry, returns the call's result if the lost attempt was applied after all
        (``_RETRY`` if not). ``defer``: raise ``StorageDown`` at once instead of waiting. ``reaches``: a
        success of this call on its first attempt proves the database is back (a cached read does not).
        """
        attempt = 0
        if defer and self.down() and time.monotonic() - self.tried < DEFER_RETRY:
            raise StorageDown(self.name)
        while True:
            began = time.time()
            try:
                result = _RETRY if check is None or attempt == 0 else check()
                if result is _RETRY:
                    result = call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                since = self.failed(exc, began)
                if defer:
                    raise StorageDown(self.name) from exc
                left = since + self.limit - time.time()
                if left <= 0:
                    raise StorageUnavailable(
                        f"{self.what} {self.name} unreachable since {_clock(since)}, longer than the "
                        f"{_duration(self.limit)} limit ({describe_failure(exc)}); nothing is lost: rerun the same command "
                        f"when it is back to resume") from exc
                time.sleep(min(left, BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.8, 1.0))
                attempt += 1
                continue
            if attempt or reaches:
                self.succeeded()
                self.reached = time.monotonic()
            return result


def _clock(wall: float) -> str:
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S")


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose calls ride through outages of the database up to ``limit`` seconds."""

    def __init__(self, backend: BaseStorage, *, limit: float, name: str):
        self._backend = backend
        self._outage = _Outage(limit, name)
        self._local = threading.local()
        self.heartbeat_stale_trial_callback: Callable | None = None

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Calls in this block raise ``StorageDown`` at once instead of waiting for the storage to come back."""
        before = getattr(self._local, "defer", False)
        self._local.defer = True
        try:
            yield
        finally:
            self._local.defer = before

    def _call(self, name: str, *args: Any, check: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """``backend.name(*args)``, retried while the database is unreachable (``_Outage.ride``)."""
        return self._outage.ride(lambda: getattr(self._backend, name)(*args, **kwargs), check=check,
                                 defer=getattr(self._local, "defer", False), reaches=_reaches_database(name))

    # -- writes that must not be applied twice --------------------------------------------------------------
    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        def applied() -> Any:
            trial = self._backend.get_trial(trial_id)
            if state == TrialState.RUNNING:
                # WAITING: not claimed yet, try again; RUNNING: claimed, by us or another worker, and there is no
                # telling which: not ours (if it was, nobody runs it and ``orphans`` fails it)
                return _RETRY if trial.state == TrialState.WAITING else False
            if not trial.state.is_finished():
                return _RETRY
            if trial.state == state and (values is None or list(trial.values or ()) == list(values)):
                return True  # the lost attempt was applied
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial.number} was already {trial.state.name} when its {state.name} was recorded")

        return self._call("set_trial_state_values", trial_id, state=state, values=values, check=applied)

    # -- heartbeats -----------------------------------------------------------------------------------------
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self._grace()
        if self._cut_off_lately(grace) or self._silent_too_long(grace):
            return []
        stale = self._call("_get_stale_trial_ids", study_id)
        if self._cut_off_lately(grace):  # the read rode an outage: it saw the heartbeats the moment the storage was back
            return []
        return stale + self.orphans(study_id, grace, skip=set(stale))

    def _cut_off_lately(self, grace: float) -> bool:
        """Whether this process saw the storage unreachable within the last ``grace`` + a backoff step: then every
        heartbeat looks old until the others are back (within a backoff step of us) and have beaten again (within
        the grace), and none is judged stale."""
        return self._outage.quiet_for() < grace + BACKOFF_MAX

    def _silent_too_long(self, grace: float) -> bool:
        """Whether this process made no call to the storage for so long that an outage it did not see may have just
        ended: another worker's beats missed for longer than the grace, its next one not yet come. Such an outage
        lasts over ``grace - interval`` s, so a shorter gap hides none; a worker waiting for others polls once an
        interval, and half an interval more is slack. The next check, after a call, judges."""
        interval = self.get_heartbeat_interval() or 0
        return self._outage.silent_for() > max(grace - interval, interval) + interval / 2

    def orphans(self, study_id: int, grace: float, skip: set[int] = frozenset()) -> list[int]:
        """RUNNING trials that no worker claimed for longer than ``grace`` s (a claim whose reply was lost in an
        outage, or a worker killed between taking a trial and marking it): they have no heartbeat to go stale."""
        now = datetime.now()
        found = []
        for trial in self._call("get_all_trials", study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if attrs.WORKER in trial.user_attrs or trial.datetime_start is None or trial._trial_id in skip:
                continue
            if now - trial.datetime_start > timedelta(seconds=2 * grace):
                self._call("set_trial_user_attr", trial._trial_id, "fail_reason",
                           "claimed while the storage was unreachable and never run")
                self._call("set_trial_user_attr", trial._trial_id, attrs.SPURIOUS, True)
                found.append(trial._trial_id)
        return found

    def _grace(self) -> float:
        return float(getattr(self, "grace_period", None) or 2 * (self.get_heartbeat_interval() or 0))

    def get_heartbeat_stale_trial_callback(self):
        return self.heartbeat_stale_trial_callback or self._call("get_heartbeat_stale_trial_callback")

    def __getattr__(self, name: str) -> Any:  # engine, url, ... of the RDB storage underneath Optuna's cache
        if name.startswith("__") or name in ("_backend", "_outage", "_local"):
            raise AttributeError(name)
        inner = self._backend
        while not hasattr(inner, name) and hasattr(inner, "_backend"):
            inner = inner._backend
        return getattr(inner, name)


_RETRY = object()


class RetryingClient:
    """An ``MlflowClient`` on a database tracking store (``postgresql://...``) whose calls ride through its
    outages as the Optuna storage's do. (A tracking *server* needs none: MLflow's HTTP client retries.)

    MLflow's writes are upserts (tags), accept a repeat (the same param value) or are skipped when already
    there (a metric's same step and time); a run created in a lost reply would stay RUNNING as an empty run.
    """

    def __init__(self, client: Any, *, limit: float, name: str):
        self._client, self._outage = client, _Outage(limit, name, what="MLflow tracking store")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._outage.ride(lambda: attr(*args, **kwargs))

        return call


def _reaches_database(name: str) -> bool:
    """True for the calls that always reach the database (writes, and the reads Optuna's cache refreshes)."""
    return name.startswith(("set_", "create_", "record_", "delete_")) or name in ("get_all_trials",
                                                                                   "_get_stale_trial_ids")


def _forward(name: str) -> Callable:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    return method


# every other storage method is retried as is: reads, and writes that are upserts (attrs, intermediate
# values, heartbeats); a new study or trial whose reply was lost is handled by its caller (module docstring)
for _name in sorted({*BaseStorage.__abstractmethods__, *BaseHeartbeat.__abstractmethods__,
                     "get_n_trials", "get_best_trial", "get_trial_number_from_id", "get_trial_params", "get_trial_param",
                     "get_trial_user_attrs", "get_trial_system_attrs", "get_trial_id_from_study_id_trial_number",
                     "remove_session"}):
    if _name not in ResilientStorage.__dict__:
        setattr(ResilientStorage, _name, _forward(_name))
ResilientStorage.__abstractmethods__ = frozenset()
