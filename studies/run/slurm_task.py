"""What one task of a SLURM job array runs: a ``run_study.py worker`` process, with preemption handled.

submitit pickles a ``WorkerTask`` and runs it on the node. The task starts the worker as a child
process (the same command a local ``--workers N`` launcher starts), so the worker's own
graceful Ctrl-C/SIGTERM handling (``studies.run.interrupt``) stays the only one that touches
Optuna and MLflow.

Signals, as SLURM sends them:

- ``SIGTERM`` (``scancel``, a preemption, the time limit) reaches every process of the task: submitit's
  process ignores it, the worker stops its trial at the end of the current step and records it
  as interrupted (FAILED in Optuna and MLflow, its cell queued again by the next worker).
- ``SIGUSR2`` (submitit's ``--signal=USR2@90``: the time limit is near, or ``scancel --signal=USR2``
  on preemption) calls ``checkpoint``: the worker gets one SIGTERM and is waited for, then submitit
  requeues the task, which starts a fresh worker that runs the queued cells, the interrupted one
  included. The worker itself ignores SIGUSR2, so that it is only asked to stop once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Sequence

#: Seconds ``checkpoint`` waits for the worker to record its trial after SIGTERM (SLURM's KillWait is shorter
#: than the submitit signal delay of 90 s, so this is what the task really gets).
STOP_WAIT = 60.0


#: What a task's log says once its worker stopped for submitit to requeue it (the launcher waits for it to return).
REQUEUE_MARK = "acon: worker stopped for requeue"

class WorkerTask:
    """A picklable callable that runs one worker process on a SLURM node; submitit's checkpointing requeues it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.env = dict(env or {})
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        env = {**os.environ, **self.env}
        self._proc = subprocess.Popen(self.argv, env=env, preexec_fn=_ignore_usr2)
        code = _wait(self._proc)
        if code != 0:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            what = " (interrupted: its trial is recorded as such)" if code == 130 else " (its last lines are above)"
            raise RuntimeError(f"the worker ended with {how}{what}")
        return code

    def checkpoint(self) -> "object":
        """SIGUSR2: stop the worker at the end of its step (it records the trial), then requeue a fresh task."""
        import submitit

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if _wait(proc, STOP_WAIT) is None:
                proc.kill()
                _wait(proc)
        print(f"{REQUEUE_MARK} (exit {proc.returncode if proc else '-'})", file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(WorkerTask(self.argv, self.env))

    def __getstate__(self) -> dict:
        return {"argv": self.argv, "env": self.env}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["argv"], state["env"])


def _wait(proc: subprocess.Popen, timeout: float | None = None) -> int | None:
    """``proc``'s exit code, polled: a blocking ``wait`` holds Popen's lock, and ``checkpoint`` (a signal handler
    that runs while ``__call__`` waits) could then never take it; None if ``timeout`` s passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return proc.returncode


def _ignore_usr2() -> None:
    """In the worker (before exec): SIGUSR2 is submitit's business; an ignored signal stays ignored across exec."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class ProxyTask:
    """A picklable callable that serves Optuna's gRPC storage proxy on a SLURM node (``--slurm-proxy``) until the
    workers' job array is over: it reads the array's id from ``FOLDER/array`` (the launcher writes it once the array
    is submitted), and stops itself when none of its tasks is pending or running any more (or on SIGTERM)."""

    def __init__(self, storage_url: str, port: int, folder: str):
        self.storage_url, self.port, self.folder = storage_url, port, folder

    def __call__(self) -> None:
        import threading

        from studies.store.proxy import serve_proxy

        threading.Thread(target=self._stop_after_array, daemon=True).start()
        serve_proxy(self.storage_url, "0.0.0.0", self.port)

    def _stop_after_array(self) -> None:
        from pathlib import Path

        from studies.run.slurm_queue import OVER, array_states

        marker = Path(self.folder) / "array"
        while True:
            time.sleep(10.0)
            if not marker.exists():
                continue
            try:
                states = array_states(marker.read_text().strip())
            except Exception:  # a busy controller (or a half-written marker): ask again later
                continue
            if all(state in OVER for state in states.values()):  # {} too: the controller forgot the array
                os.kill(os.getpid(), signal.SIGTERM)
                return
