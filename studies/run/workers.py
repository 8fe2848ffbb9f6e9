"""Several worker processes on this machine, one study: the launcher queues, the workers run.

Optuna's own distributed mode does the scheduling: each worker is a ``run_study.py worker``
process that pops WAITING trials from a storage safe for several writers (a journal file or
an RDB), exactly like a worker on another machine. The launcher only queues the grid, splits
the cores (and the GPUs), forwards Ctrl-C/SIGTERM, and gives a dead worker's trial back to the queue.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.errors import UserError
from studies.run.context import Resolved
from studies.run.launch import prepare_study, resolve
from studies.run.options import RunOptions, StudyRun, worker_command
from studies.run.queue import DONE, missing_cells, state_counts
from studies.settings import Settings
from studies.spec import Study, is_study_file
from studies.store.outage import StorageUnavailable, say
from studies.store.storage import mask_url, note_on_trial, resolve_storage, resolve_tracking_uri
from studies.store import attrs

#: Seconds an interrupted worker gets to reach its next training step; then a second SIGTERM stops it at once.
GRACE = 10.0
#: Seconds the launcher then waits for workers to record their trials before killing them.
STOP_TIMEOUT = 60.0
POLL_SECONDS = 0.5


class LauncherStop(BaseException):
    """SIGTERM reached the launcher; handled like Ctrl-C."""


@dataclass
class _Worker:
    proc: subprocess.Popen
    log: Path

    @property
    def id(self) -> str:
        """The ``host:pid`` the worker records on its trials (``studies.run.launch.worker_id``)."""
        return f"{socket.gethostname()}:{self.proc.pid}"


def run_workers(study: Study | str, options: RunOptions | None = None, *, workers: int = 2,
                gpus: tuple[int, ...] = ()) -> StudyRun:
    """Queue ``study`` here, run it with ``workers`` worker processes on this machine, wait for them.

    Without a storage given, a new study goes to ``optuna.journal`` here (it takes several writers).
    ``gpus`` spreads the workers over these GPUs, round robin (one ``CUDA_VISIBLE_DEVICES`` each).
    """
    options = options or RunOptions()
    name = study_ref(study)
    resolved = resolve(name, options)
    check_gpus(gpus, options.device)
    url = resolve_storage(options.storage, study=resolved.name, workers=workers)
    check_workers(workers, url)
    # the launcher and every worker use this one store and tracking URI; each worker its share of the cores
    options = replace(options, storage=url, tracking_uri=resolve_tracking_uri(options.tracking_uri),
                      threads=options.threads or threads_per_worker(workers))
    preload_data(resolved.settings, options)
    prepared = prepare_study(resolved, options)
    before = sum(state_counts(prepared.study).get(s.name, 0) for s in DONE)
    with tempfile.TemporaryDirectory(prefix="acon-workers-") as logs:
        launcher = Launcher(name, resolved, options, Path(logs), prepared, gpus)
        launcher.run(workers)
    done = sum(state_counts(prepared.study).get(s.name, 0) for s in DONE)
    return StudyRun(prepared.study, prepared.parent_run_id, done - before, state_counts(prepared.study),
                    missing_cells(prepared.study, resolved.spec, resolved.settings), url)


def check_workers(workers: int, storage_url: str) -> None:
    """Refuse a worker count below 1 and SQLite with several writers (it locks, then fails)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > 1 and storage_url.startswith("sqlite"):
        raise UserError(f"SQLite storage {mask_url(storage_url)} cannot take {workers} writers; use "
                        f"--storage journal:///PATH/optuna.journal (this machine; without --storage a new study "
                        f"goes to optuna.journal) or --storage postgresql+psycopg://USER@HOST/DB (several machines; "
                        f"the password in ~/.pgpass)")


def parse_gpus(text: str | None) -> tuple[int, ...]:
    """``"0,1"`` -> ``(0, 1)``: GPU indices (integers >= 0), as ``--gpus`` takes them."""
    if not text:
        return ()
    try:
        gpus = tuple(int(g) for g in text.split(","))
    except ValueError:
        gpus = (-1,)
    if any(g < 0 for g in gpus):
        raise UserError(f"--gpus takes comma-separated GPU indices (integers >= 0, e.g. 0,1), got {text!r}")
    return gpus


def check_gpus(gpus: tuple[int, ...], device: str) -> None:
    """Refuse GPUs for workers told to run on the CPU."""
    if gpus and device == "cpu":
        raise UserError(f"--gpus {','.join(map(str, gpus))} needs --device cuda or auto, not cpu")


def worker_env(index: int, threads: int, gpus: tuple[int, ...] = ()) -> dict[str, str]:
    """The environment of worker ``index``: its thread count and, with ``gpus``, its GPU (round robin)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
    return env


def threads_per_worker(workers: int) -> int:
    """This machine's cores split evenly between ``workers`` processes (at least one each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def fail_trials_of(study: optuna.Study, worker_ids: set[str], tracking_uri: str, reason: str, *,
                   slurm_tasks: set[str] = frozenset()) -> list[int]:
    """Fail the RUNNING trials of dead workers (``host:pid``, or any worker of these SLURM array tasks, ``JOB_TASK``)
    and their MLflow child runs; return their numbers."""
    from studies.tracking.writer import Tracker

    failed, tracker = [], None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(attrs.WORKER, "")
        if worker not in worker_ids and worker.rpartition(" slurm:")[2] not in slurm_tasks:
            continue
        try:
            note_on_trial(study, t, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            continue  # it finished (or a heartbeat check failed it) in between
        failed.append(t.number)
        if t.user_attrs.get(attrs.RUN_ID):
            tracker = tracker or Tracker.attach(tracking_uri, study.user_attrs[attrs.PARENT_RUN_ID])
            tracker.fail_if_running(t.user_attrs[attrs.RUN_ID], reason)
    return failed


class Launcher:
    """Starts, watches and stops the worker processes of one study run."""

    def __init__(self, study: str, resolved: Resolved, options: RunOptions, logs: Path, prepared: StudyRun,
                 gpus: tuple[int, ...] = ()):
        self.study, self.resolved, self.options, self.logs, self.prepared = study, resolved, options, logs, prepared
        self.gpus = gpus
        self.cmd = worker_command(study, options)
        self.live: list[_Worker] = []
        self.errors: list[Exception] = []
        self.restarts = 0

    def run(self, workers: int) -> None:
        """Start ``workers`` processes and wait for all; on Ctrl-C/SIGTERM stop them and re-raise."""
        old = signal.signal(signal.SIGTERM, raise_stop) if main_thread() else None
        try:
            self._launch(workers)
        except (KeyboardInterrupt, LauncherStop):
            self._stop_all()
            self._close_parent("KILLED")
            raise KeyboardInterrupt from None
        except StorageUnavailable:
            # the storage stayed away past the limit: the workers meet the same limit; whatever they cannot
            # record stays RUNNING with a stale heartbeat, and a rerun fails it and runs its cell again
            self._stop_all(record=False)
            self._tracker().close_parent("FAILED")
            raise
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        self._finish()

    def _launch(self, workers: int) -> None:
        """Start the workers and wait for them (a subclass launches them elsewhere: ``studies.run.slurm``)."""
        for _ in range(workers):
            self._start()
        with self._progress() as bar:
            self._wait(bar, max_restarts=workers)

    def _start(self) -> None:
        index = len(self.live) + self.restarts
        log = self.logs / f"worker-{index}-{time.monotonic_ns()}.log"
        env = worker_env(index, self.options.threads, self.gpus)
        # a session of its own: a terminal's Ctrl-C reaches the launcher only, which sends one SIGTERM each
        proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env,
                                start_new_session=True)
        self.live.append(_Worker(proc, log))

    def _wait(self, bar: Any, *, max_restarts: int) -> None:
        while self.live:
            time.sleep(POLL_SECONDS)
            for worker in [w for w in self.live if w.proc.poll() is not None]:
                self.live.remove(worker)
                self._reap(worker, restart=self.restarts < max_restarts)
            done = self._done()
            if done != bar.n:
                bar.update(done - bar.n)

    def _reap(self, worker: _Worker, *, restart: bool) -> None:
        """A worker exited: if it died, give its trial back to the queue and start another worker."""
        rc = worker.proc.returncode
        if rc == 0:
            return
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        last = _last_line(worker.log) if rc > 0 else None
        failed = fail_trials_of(self.prepared.study, {worker.id}, resolve_tracking_uri(self.options.tracking_uri),
                                f"worker {worker.id} died ({how})" + (f": {last}" if last else ""))
        if rc > 0:
            # exit code 2 is a user error the worker printed in one line; anything else is a bug in it, whose
            # traceback would go with the logs' temporary folder
            if rc != 2:
                say(f"worker {worker.id} failed ({how}); the end of its log:\n{log_tail(worker.log, lines=20)}")
            error = UserError if rc == 2 else RuntimeError
            self.errors.append(error(f"worker {worker.id} failed ({how}): {last}"))
            return
        prepare_study(self.resolved, self.options)  # requeue the dead worker's cells
        if restart and (failed or self._waiting()):
            self.restarts += 1
            self._start()

    def _stop_all(self, *, record: bool = True) -> None:
        """SIGTERM each (the trial stops at its next step), again after ``GRACE`` s (at once), SIGKILL at the end;
        ``record``: fail the trials of workers that did not record theirs (not possible without the storage)."""
        try:
            for timeout in (GRACE, STOP_TIMEOUT):
                self._signal_live(signal.SIGTERM)
                if self._wait_live(timeout):
                    break
        except (KeyboardInterrupt, LauncherStop):  # asked again: do not wait any longer
            pass
        for worker in self.live:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        if record:
                fail_trials_of(self.prepared.study, {w.id for w in self.live},
                           resolve_tracking_uri(self.options.tracking_uri), "interrupted: the launcher stopped its workers")

    def _signal_live(self, sig: int) -> None:
        for worker in self.live:
            if worker.proc.poll() is None:
                worker.proc.send_signal(sig)

    def _wait_live(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every live worker to exit; True if they all did."""
        deadline = time.monotonic() + timeout
        try:
            for worker in self.live:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def _finish(self) -> None:
        """All workers exited: the parent run is FINISHED if nothing is left, else KILLED (or an error)."""
        complete = not self._waiting() and not self._running()
        self._close_parent("FINISHED" if complete else "KILLED")
        if self.errors and not complete:
            raise self.errors[0]

    def _close_parent(self, status: str) -> None:
        from studies.tracking.summary import publish

        tracker = self._tracker()
        publish(tracker, self.resolved.spec, self.resolved.settings, self.prepared.study)
        tracker.close_parent(status)

    def _tracker(self):
        from studies.tracking.writer import Tracker

        return Tracker.attach(resolve_tracking_uri(self.options.tracking_uri), self.prepared.parent_run_id,
                              self.options.outage_limit)

    def _progress(self):
        from tqdm.auto import tqdm

        total = sum(self.prepared.counts.get(s, 0) for s in ("WAITING", "COMPLETE", "PRUNED"))
        return tqdm(total=total, initial=self._done(), unit="trial", dynamic_ncols=True,
                    desc=f"{self.prepared.study.study_name} x{len(self.live)}", disable=not self.options.progress)

    def _done(self) -> int:
        return len(self.prepared.study.get_trials(deepcopy=False, states=DONE))

    def _waiting(self) -> bool:
        return bool(self.prepared.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _running(self) -> bool:
        return bool(self.prepared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def study_ref(study: Study | str) -> str:
    """The name or file that worker processes load; a Study object has neither."""
    if not isinstance(study, str):
        raise UserError("run_workers needs a built-in study name or a .py file defining STUDY: "
                         "worker processes load the study by that name")
    return str(Path(study).resolve()) if is_study_file(study) else study


def preload_data(settings: Settings, options: RunOptions) -> None:
    """Load (and download, once) the dataset here, so a bad name fails before any worker starts."""
    from studies.data import load_dataset

    load_dataset(settings["dataset"], data_dir=options.data_dir, download=options.download,
                 limit=settings.get("limit"), seed=0)


def log_tail(*logs: Path, lines: int, indent: str = "  ", skip: str | None = None) -> str:
    """The last ``lines`` non-blank lines of ``logs`` (those that exist, in turn), each indented; lines that hold
    ``skip`` are left out (a launcher's own chatter)."""
    text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
    kept = [line for line in text.splitlines() if line.strip() and (skip is None or skip not in line)]
    return "\n".join(indent + line for line in kept[-lines:])


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no message"


def raise_stop(signum: int, frame: Any) -> None:
    raise LauncherStop(signal.Signals(signum).name)


def main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
