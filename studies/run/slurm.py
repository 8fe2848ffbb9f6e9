"""``run STUDY --launcher slurm``: the study's workers as one SLURM job array, submitted through submitit.

The launcher does here what the local one does (``studies.run.workers``): it queues the grid and
opens the parent run, then each array task runs ``run_study.py worker`` against the shared
storage (``studies.run.slurm_task``), and the launcher watches: cells done out of the total from
the storage, tasks pending, running and failed from ``squeue`` and submitit's result files. When
the tasks are gone it closes the parent run and returns what a local run returns. Ctrl-C (or
SIGTERM) cancels the array: each worker records its trial as interrupted, and a rerun resumes.

A task that ends badly has its RUNNING trials failed (they are recognised by the ``slurm:JOB_TASK``
in their ``worker`` attribute) and their cells queued again, for the tasks still running or for a
rerun; its log's last lines are shown.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studies.errors import UserError
from studies.run.launch import prepare_study, resolve
from studies.run.options import RunOptions, StudyRun, worker_command
from studies.run.queue import DONE, missing_cells, state_counts
from studies.run.slurm_config import SlurmConfig
from studies.run.slurm_queue import OVER, ControllerBusy, array_states, batch_host, slurm
from studies.run.slurm_task import REQUEUE_MARK, ProxyTask, WorkerTask
from studies.run.workers import (Launcher, LauncherStop, check_workers, fail_trials_of, log_tail, preload_data,
                                 study_ref)
from studies.spec import Study
from studies.store.outage import say
from studies.store.storage import mask_url, resolve_storage, resolve_tracking_uri

#: Seconds between two looks at the queue and the storage.
POLL_SECONDS = 2.0
#: Seconds the launcher waits, after cancelling, for the tasks to record their trials and leave the queue.
CANCEL_WAIT = 90.0
#: Folders that are on each node's own disk, never shared with the others.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run")
#: Seconds a task that is over without a result file is still watched: a requeued one comes back PENDING. One whose
#: log says its worker stopped for a requeue is watched ``REQUEUE_WAIT`` s: its old step ends first (slurmstepd
#: waits up to its KillWait), and a loaded controller takes its time to requeue it.
REQUEUE_GRACE, REQUEUE_WAIT = 20.0, 300.0
#: Seconds the launcher waits for the storage proxy's job to start running.
PROXY_WAIT = 600.0
PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}


@dataclass
class Submitted:
    """A job array submitted with ``--detach``: where it is and how to follow it."""

    array_id: str
    tasks: int
    folder: Path
    study_name: str
    experiment: str
    tracking_uri: str

    def text(self) -> str:
        return (f"submitted SLURM job array {self.array_id}: {self.tasks} task(s) of study {self.study_name}; "
                f"logs in {self.folder}\n"
                f"watch it: squeue -j {self.array_id}\n"
                f"its table so far: run_study.py report {self.experiment} --tracking-uri {mask_url(self.tracking_uri)}\n"
                f"cancel it: scancel {self.array_id}; rerun the same command (without --detach to watch) to resume")


def run_slurm(study: Study | str, options: RunOptions | None = None, config: SlurmConfig | None = None, *,
              workers: int = 2, detach: bool = False) -> StudyRun | Submitted:
    """Queue ``study``, submit ``workers`` SLURM array tasks that run it, and (unless ``detach``) watch them."""
    options, config = options or RunOptions(), config or SlurmConfig()
    config.check()
    name = study_ref(study)
    resolved = resolve(name, options)
    url = resolve_storage(options.storage, study=resolved.name, workers=max(workers, 2))
    folder = Path(config.folder or Path("slurm") / resolved.name).resolve()
    tracking = resolve_tracking_uri(options.tracking_uri)
    check_shared(url, tracking, folder)
    check_workers(workers, url)
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--launcher slurm needs submitit: pip install 'acon-ablation[cluster]'")
    if not _have("sbatch"):
        raise UserError("--launcher slurm needs SLURM's sbatch on this machine's PATH (run it on a login node); "
                        "without a cluster use --launcher local")
    if config.proxy and not url.startswith(("postgresql", "mysql")):
        raise UserError(f"--slurm-proxy serves a database server (--storage postgresql+psycopg://...), got "
                        f"{mask_url(url)}")
    if config.gpus and options.device == "cpu":
        raise UserError(f"--slurm-gpus {config.gpus} needs --device cuda or auto, not cpu")
    options = replace(options, storage=url, tracking_uri=tracking, threads=options.threads or config.cpus,
                      data_dir=str(Path(options.data_dir).resolve()) if options.data_dir else None)
    preload_data(resolved.settings, options)
    prepared = prepare_study(resolved, options)
    launcher = SlurmLauncher(name, resolved, options, folder, prepared, config)
    if resolved.spec.is_grid and not prepared.counts.get("WAITING"):
        say(f"study {resolved.name}: no cell left to run; nothing submitted")
        launcher._finish()  # the parent run, reopened by prepare_study, is closed again
        return replace(prepared, storage=url)
    if config.proxy:
        launcher.start_proxy(url, config.proxy)
    launcher.submit(workers)
    if detach:
        return Submitted(launcher.array_id, workers, folder, resolved.name, options.experiment or resolved.spec.name,
                         tracking)
    before = sum(prepared.counts.get(s.name, 0) for s in DONE)
    launcher.run(workers)
    done = sum(state_counts(prepared.study).get(s.name, 0) for s in DONE)
    return StudyRun(prepared.study, prepared.parent_run_id, done - before, state_counts(prepared.study),
                    missing_cells(prepared.study, resolved.spec, resolved.settings), url)


def check_shared(storage: str, tracking: str, folder: Path) -> None:
    """Refuse stores that tasks on other nodes cannot share: SQLite files, and files on a node's own disk."""
    for what, url, flag in (("Optuna storage", storage, "--storage"), ("MLflow store", tracking, "--tracking-uri")):
        if url.startswith("sqlite"):
            raise UserError(f"{what} {mask_url(url)} is an SQLite file, which tasks on other nodes cannot share; "
                            f"use {flag} postgresql+psycopg://USER@HOST/DB"
                            + (" (or journal:///SHARED/FOLDER/optuna.journal)" if flag == "--storage" else
                               " (or an MLflow server: http://HOST:5000)"))
        path = _local_path(url)
        if path is not None and _node_local(path):
            raise UserError(f"{what} {url} is on {_node_local(path)}, a folder on each node's own disk; "
                            f"put it on a folder the nodes share (e.g. beside {folder}) or use {flag} "
                            f"postgresql+psycopg://USER@HOST/DB")
    if _node_local(folder):
        say(f"note: the SLURM folder {folder} is on a node-local disk; on a cluster of several nodes, give "
            f"--slurm-folder on a shared one")


class SlurmLauncher(Launcher):
    """Submits, watches and cancels the SLURM job array of one study run (``Launcher`` closes the parent)."""

    def __init__(self, study: str, resolved: Any, options: RunOptions, folder: Path, prepared: StudyRun,
                 config: SlurmConfig):
        super().__init__(study, resolved, options, folder, prepared)
        self.config, self.folder = config, folder
        self.jobs: list[Any] = []
        self.array_id = ""
        self.failed: dict[str, str] = {}  # task id -> why
        self.ended_ok: set[str] = set()
        self.proxy_job: Any = None
        self.known: dict[str, str] = {}  # the array's live tasks, as the controller said last
        self.gone_since: dict[str, float] = {}  # tasks over without a result file, since (monotonic s)

    def start_proxy(self, storage: str, port: int) -> None:
        """Submit the storage proxy as a job of its own, wait until it runs, and send the workers through it."""
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.SlurmExecutor(folder=self.folder)
        c = self.config
        params = {"job_name": f"acon-proxy-{self.resolved.name}"[:60], "time": c.time, "cpus_per_task": 1,
                  "ntasks_per_node": 1, "setup": list(c.setup)}
        optional = {"partition": c.partition, "account": c.account, "qos": c.qos}
        executor.update_parameters(**params, **{k: v for k, v in optional.items() if v is not None})
        try:
            self.proxy_job = executor.submit(ProxyTask(storage, port, str(self.folder)))
        except Exception as exc:
            raise UserError(f"sbatch refused the storage proxy's job: {_first_words(exc)}") from None
        deadline = time.monotonic() + PROXY_WAIT
        while (host := batch_host(self.proxy_job.job_id)) is None:
            if time.monotonic() > deadline or self.proxy_job.job_id not in self._live_jobs(self.proxy_job.job_id):
                slurm("scancel", self.proxy_job.job_id)
                raise UserError(f"the storage proxy's job {self.proxy_job.job_id} did not start within "
                                f"{PROXY_WAIT:.0f} s (see {self.proxy_job.paths.stderr}); run without --slurm-proxy")
            time.sleep(POLL_SECONDS)
        self.options = replace(self.options, storage=f"grpc://{host}:{port}")
        say(f"storage proxy: SLURM job {self.proxy_job.job_id} on {host}, the workers use grpc://{host}:{port}")

    def _live_jobs(self, job_id: str) -> dict[str, str]:
        try:
            return {task: state for task, state in array_states(job_id).items() if state not in OVER}
        except ControllerBusy:
            return {job_id: "UNKNOWN"}

    def submit(self, tasks: int) -> None:
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.SlurmExecutor(folder=self.folder)
        executor.update_parameters(**self._sbatch(tasks))
        task = WorkerTask(worker_command(self.study, self.options), {"OMP_NUM_THREADS": str(self.options.threads),
                                                                   "MKL_NUM_THREADS": str(self.options.threads)})
        try:
            with executor.batch():
                jobs = [executor.submit(task) for _ in range(tasks)]
        except Exception as exc:  # sbatch refused (a bad partition, account, QoS...): its own words, one line
            raise UserError(f"sbatch refused the job array: {_first_words(exc)}") from None
        self.jobs = jobs
        self.array_id = self.jobs[0].job_id.split("_")[0]
        self.known = {job.job_id: "PENDING" for job in jobs}
        (self.folder / "array").write_text(self.array_id)  # the proxy's job stops once this array is over
        say(f"submitted SLURM job array {self.array_id} ({tasks} task(s)); logs in {self.folder}")

    def _sbatch(self, tasks: int) -> dict[str, Any]:
        c = self.config
        params: dict[str, Any] = {"job_name": f"acon-{self.resolved.name}"[:60], "time": c.time, "cpus_per_task": c.cpus,
                                  "ntasks_per_node": 1, "array_parallelism": tasks, "setup": list(c.setup)}
        optional = {"partition": c.partition, "account": c.account, "qos": c.qos,
                    "mem": f"{int(c.mem * 1024)}M" if c.mem else None, "gpus_per_task": c.gpus or None}
        return {**params, **{k: v for k, v in optional.items() if v is not None}}

    def _launch(self, workers: int) -> None:
        """Follow the submitted array until every task left the queue (``Launcher.run`` handles Ctrl-C/SIGTERM,
        with ``_stop_all``: here, cancel the array)."""
        with self._progress() as bar:
            while True:
                states = self._states()
                self._reap(states)
                done = self._done()
                if done != bar.n:
                    bar.update(done - bar.n)
                bar.set_postfix_str(self._tally(states), refresh=True)
                if not states:
                    break
                time.sleep(POLL_SECONDS)
        say(f"SLURM job array {self.array_id}: {len(self.ended_ok)} task(s) ended well, {len(self.failed)} failed; "
            f"logs in {self.folder}")

    def _stop_all(self, *, record: bool = True) -> None:
        self.cancel(record=record)

    def cancel(self, *, record: bool = True) -> None:
        """``scancel`` the array: each worker stops its trial at the end of a step and records it; wait for them."""
        for _ in range(5):  # a busy controller: ask again
            try:
                slurm("scancel", self.array_id, *([self.proxy_job.job_id] if self.proxy_job else []))
                break
            except ControllerBusy:
                continue
        say(f"cancelled SLURM job array {self.array_id}: the workers record their trials as interrupted; "
            f"rerun the same command to resume")
        deadline = time.monotonic() + CANCEL_WAIT
        try:
            while self._states() and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
        except (KeyboardInterrupt, LauncherStop):
            pass  # asked again: do not wait any longer
        if record:
            tasks = {job.job_id for job in self.jobs}
            fail_trials_of(self.prepared.study, set(), self.options.tracking_uri,
                           "interrupted: the launcher cancelled its SLURM job array", slurm_tasks=tasks)

    def _states(self) -> dict[str, str]:
        """``{task id: SLURM state}`` of the array's tasks that are not over: pending (a requeued one too), running
        or completing (``array_states``, from the controller itself: no accounting database needed)."""
        try:
            self.known = {task: state for task, state in array_states(self.array_id).items() if state not in OVER}
        except ControllerBusy as exc:
            say(f"note: {exc}; asking again")  # what it said last still holds
        return {**self.known, **self._ending(self.known)}

    def _ending(self, live: dict[str, str]) -> dict[str, str]:
        """Tasks just over without a result file, for ``REQUEUE_GRACE`` s: one being requeued (its worker stopped
        for submitit's checkpoint, which writes no result) shows CANCELLED for a moment, then PENDING again."""
        now, ending = time.monotonic(), {}
        for job in self.jobs:
            if job.job_id in live or job.job_id in self.failed or job.job_id in self.ended_ok:
                self.gone_since.pop(job.job_id, None)
                continue
            if job.paths.result_pickle.exists():
                continue
            grace = REQUEUE_WAIT if _requeuing(job) else REQUEUE_GRACE
            if now - self.gone_since.setdefault(job.job_id, now) < grace:
                ending[job.job_id] = "ENDING"
        return ending

    def _reap(self, states: dict[str, str]) -> None:
        """Tasks that left the queue since the last look: a failed one has its trials failed and cells queued."""
        for job in self.jobs:
            if job.job_id in states or job.job_id in self.failed or job.job_id in self.ended_ok:
                continue
            why = _outcome(job)
            if why is None:
                self.ended_ok.add(job.job_id)
                continue
            self.failed[job.job_id] = why
            failed = fail_trials_of(self.prepared.study, set(), self.options.tracking_uri,
                                    f"SLURM task {job.job_id} {why}", slurm_tasks={job.job_id})
            prepare_study(self.resolved, self.options)  # its cells go back to the queue, for the others or a rerun
            tail = log_tail(job.paths.stderr, job.paths.stdout, lines=8, indent="    ", skip="submitit")
            say(f"SLURM task {job.job_id} {why}" + (f"; trial(s) {failed} failed and queued again" if failed else "")
                + (f"; last lines of {job.paths.stderr}:\n" + tail if tail else ""))

    def _tally(self, states: dict[str, str]) -> str:
        pending = sum(s in PENDING for s in states.values())
        return f"job {self.array_id}: pending {pending}, running {len(states) - pending}, failed {len(self.failed)}"

    def _finish(self) -> None:
        """The tasks are gone: the parent run is FINISHED if nothing is left, else KILLED. A failed task is not an
        error of this process (it was said, with its log); the summary shows the cells left, a rerun runs them."""
        self._close_parent("FINISHED" if not self._waiting() and not self._running() else "KILLED")

    def _progress(self):
        from tqdm.auto import tqdm

        total = sum(self.prepared.counts.get(s, 0) for s in ("WAITING", "COMPLETE", "PRUNED"))
        return tqdm(total=total, initial=self._done(), unit="cell", dynamic_ncols=True,
                    desc=f"{self.prepared.study.study_name} slurm", disable=not self.options.progress)


def _outcome(job: Any) -> str | None:
    """None if the task's worker ended well, else why not (from submitit's result file)."""
    import pickle

    path = job.paths.result_pickle
    if not path.exists():
        return "ended without a result (killed, cancelled, or its node failed)"
    try:
        with path.open("rb") as f:
            kind, value = pickle.load(f)
    except Exception:  # a half-written file: the task was killed while writing it
        return "ended without a readable result"
    if kind == "success":
        return None
    last = [line for line in str(value).splitlines() if line.strip()]
    return f"failed: {last[-1] if last else kind}"


def _local_path(url: str) -> Path | None:
    """The file behind a journal (``journal:///PATH``), file-store (``file:///PATH``) or plain-path URL; None for
    servers."""
    for prefix in ("journal://", "file://"):
        if url.startswith(prefix):
            return Path(url[len(prefix):])
    return Path(url) if "://" not in url else None


def _node_local(path: Path) -> str | None:
    resolved = str(Path(path).resolve())
    return next((d for d in NODE_LOCAL if resolved == d or resolved.startswith(d + "/")), None)


def _have(program: str) -> bool:
    from shutil import which

    return which(program) is not None


def _first_words(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "error" in line.lower()] or lines
    return useful[-1] if useful else type(exc).__name__


def _requeuing(job: Any) -> bool:
    """Whether the task's log says its worker stopped for a requeue (submitit's checkpoint)."""
    try:
        return REQUEUE_MARK in Path(job.paths.stderr).read_text(errors="replace")
    except OSError:
        return False
