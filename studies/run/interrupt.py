"""Graceful Ctrl-C and SIGTERM: the first signal stops the study at the next safe point.

A signal raised at an arbitrary point can land inside a database write and leave the
Optuna or MLflow session broken, so the handler only records it; the trainer checks after
every step (``check``) and the runner between trials. A second signal stops at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_pending: list[str] = []


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a study; the running trial is recorded as failed."""


def check(*_: Any) -> None:
    """Raise ``Interrupted`` if a signal arrived (usable as the trainer's per-step progress callback)."""
    if _pending:
        raise Interrupted(_pending[0])


def pending() -> bool:
    """Whether a signal arrived that the next ``check`` will raise (a custom loop polls this)."""
    return bool(_pending)


@contextmanager
def graceful_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are recorded, then raised by ``check`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _pending:  # a second signal: the user does not want to wait
            raise Interrupted(name)
        _pending.append(name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _pending.clear()
    try:
        yield
        check()  # a signal that came after the last check still stops the run
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _pending.clear()
