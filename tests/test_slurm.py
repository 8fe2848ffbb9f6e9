"""``run --launcher slurm``: its settings and refusals (everywhere), and whole studies on a real SLURM.

The SLURM tests need a one-node SLURM (``.ci/slurm.sh`` starts slurmctld, slurmd and munge; CI does) and
the test PostgreSQL (``.ci/services.sh``); they skip with the reason otherwise.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from _services import ROOT, SLOW, cli, cli_env, free_port, fresh_database, postgres_url, wait_for, write_study
from studies.errors import UserError
from studies.run.slurm import check_shared
from studies.run.slurm_queue import OVER, array_states
from studies.run.slurm_config import FIELDS, SlurmConfig, read_config_file, slurm_config
from studies.store import attrs


def _parse(*flags: str):
    from run_study import build_parser

    return build_parser().parse_args(["run", "variants", *flags])


# -- settings, everywhere ------------------------------------------------------------------------

def test_flags_win_over_the_file_which_wins_over_the_defaults(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text('[slurm]\npartition = "gpu"\ntime = 240\ngpus = 1\nsetup = ["module load cuda", "nvidia-smi"]\n')
    got = slurm_config(_parse("--launcher", "slurm", "--slurm-config", str(config), "--slurm-time", "30",
                              "--slurm-qos", "high"))
    assert got == SlurmConfig(partition="gpu", time=30, gpus=1, qos="high", setup=("module load cuda", "nvidia-smi"))
    assert slurm_config(_parse()) == SlurmConfig()  # no file, no flags: the defaults


@pytest.mark.parametrize("text, words", [
    ('[slurm]\npartion = "gpu"\n', ["unknown key(s) partion", "valid: " + ", ".join(FIELDS)]),
    ('partition = "gpu"\n', ["no [slurm] table"]),
    ('[slurm]\nsetup = "module load cuda"\n', ["setup must be a list"]),
    ('[slurm\n', ["not valid TOML"]),
])
def test_a_bad_config_file_is_refused_in_one_line_naming_the_fix(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_config_file(path)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


@pytest.mark.parametrize("flag, value, words", [
    ("--slurm-time", "0", "--slurm-time must be a number >= 1"),
    ("--slurm-cpus", "0", "--slurm-cpus must be a number >= 1"),
    ("--slurm-gpus", "-1", "--slurm-gpus must be a number >= 0"),
    ("--slurm-mem", "0", "--slurm-mem must be a number >= 0.1"),
])
def test_numbers_out_of_range_say_the_range(flag, value, words):
    with pytest.raises(UserError, match=words):
        slurm_config(_parse("--launcher", "slurm", flag, value))


def test_the_sbatch_script_carries_every_setting():
    """What submitit writes from our parameters (the script sbatch gets), for each flag."""
    from submitit.slurm.slurm import _make_sbatch_string

    from studies.run.slurm import SlurmLauncher

    config = SlurmConfig(partition="gpu", time=90, gpus=2, cpus=8, mem=16, account="lab", qos="high",
                         setup=("module load cuda/12",))
    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.config, launcher.resolved = config, type("R", (), {"name": "variants-quick"})()
    script = _make_sbatch_string(command="python -m x", folder="/shared/logs", map_count=3, **launcher._sbatch(3))
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-task=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=16384M", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --array=0-2%3", "#SBATCH --job-name=acon-variants-quick", "#SBATCH --signal=USR2@90",
                 "module load cuda/12"):
        assert line in script, line


@pytest.mark.parametrize("storage, tracking, words", [
    ("sqlite:////shared/optuna.db", "http://tracker:5000", "Optuna storage sqlite:////shared/optuna.db is an SQLite file"),
    ("postgresql+psycopg://u@db/o", "sqlite:///mlflow.db", "MLflow store sqlite:///mlflow.db is an SQLite file"),
    ("journal:///tmp/x/optuna.journal", "http://tracker:5000", "is on /tmp, a folder on each node's own disk"),
    ("postgresql+psycopg://u@db/o", "file:///dev/shm/mlruns", "is on /dev/shm, a folder on each node's own disk"),
])
def test_stores_the_other_nodes_cannot_share_are_refused(storage, tracking, words, tmp_path):
    with pytest.raises(UserError, match=words.replace("+", r"\+")):
        check_shared(storage, tracking, tmp_path)
    check_shared("journal:///home/me/optuna.journal", "http://tracker:5000", tmp_path)  # a shared folder: accepted
    check_shared("postgresql+psycopg://u@db/o", "postgresql+psycopg://u@db/m", tmp_path)


def test_the_cli_refuses_sqlite_and_stray_slurm_flags_in_one_line(tmp_path):
    out = cli("run", "variants", "--launcher", "slurm", "--workers", "2", "--storage", f"sqlite:///{tmp_path}/o.db",
              "--tracking-uri", "http://127.0.0.1:9/")
    assert out.returncode == 2 and "is an SQLite file" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.db").exists()  # refused before anything was created
    out = cli("run", "variants", "--slurm-partition", "gpu")
    assert out.returncode == 2 and out.stderr.strip() == "error: --detach, --slurm-config and --slurm-* flags need " \
                                                         "--launcher slurm"


# -- a real SLURM ---------------------------------------------------------------------------------

def _slurm() -> None:
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed: source .ci/slurm.sh (as root) to install and start a one-node SLURM")
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    usable = [s for s in out.stdout.split() if not s.rstrip("*~#!%$@^-").startswith(("down", "drain", "fail", "unk"))]
    if out.returncode != 0 or not usable:
        pytest.skip(f"SLURM does not answer or has no usable node ({(out.stderr or out.stdout).strip()[:120]}): "
                    f"source .ci/slurm.sh")


@pytest.fixture
def stores():
    _slurm()
    url = postgres_url()
    with fresh_database(url) as storage, fresh_database(url) as tracking:
        try:
            yield storage, tracking
        finally:
            held = _STORAGES.pop(storage, None)
            if held is not None:
                held.engine.dispose()


#: One Optuna storage per database for the tests' polling: ``optuna.load_study(storage=URL)`` makes a new engine
#: (and connection pool) each call, and polling every 0.3 s would hold PostgreSQL's 100 connections within minutes.
_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _run_args(study_file: str, storage: str, tracking: str, folder: Path, *extra: str) -> list[str]:
    return ["run", study_file, "--launcher", "slurm", "--workers", "2", "--storage", storage, "--tracking-uri",
            tracking, "--device", "cpu", "--slurm-cpus", "1", "--slurm-folder", str(folder), "--no-progress", *extra]


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "run_study", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=cli_env(**env), cwd=ROOT, start_new_session=True)


def _trials(study_file: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    name = Path(study_file).stem + "-quick"
    from sqlalchemy.exc import ProgrammingError

    try:  # only once the launcher created the study: Optuna's first connection writes a version row, which races
        if storage not in _STORAGES:
            _STORAGES[storage] = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        return optuna.load_study(study_name=name, storage=_STORAGES[storage]).trials
    except (ProgrammingError, optuna.exceptions.StorageInternalError):  # no tables yet
        raise KeyError(name) from None


def _each_cell_once(trials) -> Counter:
    done = Counter(t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE")
    assert done and set(done.values()) == {1}, done  # none run twice
    assert not [t for t in trials if t.state.name == "RUNNING"]
    return done


def _parent_status(tracking: str, experiment: str) -> str:
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=200)
    return next(r.info.status for r in runs if r.data.tags.get("acon.role") == "parent")


@pytest.mark.slow
def test_a_two_task_array_runs_every_cell_once(tmp_path, stores):
    storage, tracking = stores
    study_file = write_study(tmp_path, "slurmok")
    out = cli(*_run_args(study_file, storage, tracking, tmp_path / "logs"), timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "submitted SLURM job array" in out.stderr and "2 task(s) ended well, 0 failed" in out.stderr
    trials = _trials(study_file, storage)
    assert len(_each_cell_once(trials)) == 4 and len(trials) == 4
    tasks = {t.user_attrs[attrs.WORKER].rpartition(" slurm:")[2] for t in trials}
    assert all("_" in task for task in tasks) and tasks <= {f"{tasks.pop().split('_')[0]}_{i}" for i in range(2)}
    assert _parent_status(tracking, "slurmok") == "FINISHED"
    assert sorted(p.name for p in (tmp_path / "logs").glob("*_log.err")) != []
    again = cli(*_run_args(study_file, storage, tracking, tmp_path / "logs"), timeout=300)  # nothing left: no array
    assert again.returncode == 0 and "no cell left to run; nothing submitted" in again.stderr, again.stderr[-2000:]
    assert "submitted SLURM job array" not in again.stderr and _parent_status(tracking, "slurmok") == "FINISHED"


@pytest.mark.slow
def test_detach_through_a_proxy_job_returns_and_the_last_worker_closes_the_study(tmp_path, stores):
    """``--detach --slurm-proxy PORT``: the storage proxy runs as a SLURM job of its own, the workers reach the
    database through it only, and it stops by itself once the array is over (nobody is left to stop it)."""
    storage, tracking = stores
    study_file = write_study(tmp_path, "slurmdet")
    port = free_port()
    out = cli(*_run_args(study_file, storage, tracking, tmp_path / "logs", "--detach", "--slurm-proxy", str(port)),
              timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    proxy_job = out.stderr.split("storage proxy: SLURM job ", 1)[1].split()[0]
    assert "the workers use grpc://" in out.stderr and f":{port}" in out.stderr
    array = out.stdout.split("submitted SLURM job array ", 1)[1].split(":", 1)[0]
    assert f"squeue -j {array}" in out.stdout and f"scancel {array}" in out.stdout
    assert "run_study.py report slurmdet --tracking-uri postgresql+psycopg://acon:***@" in out.stdout
    wait_for(lambda: not {t: s for t, s in array_states(array).items() if s not in OVER}, 240,
             "the detached array to finish", poll=1.0)
    trials = _trials(study_file, storage)
    assert len(_each_cell_once(trials)) == 4
    assert _parent_status(tracking, "slurmdet") == "FINISHED"  # closed by the worker that ran the last cell
    argvs = [_worker_argv(p) for p in (tmp_path / "logs").glob(f"{array}_*_submitted.pkl")]
    assert len(argvs) == 2 and all("grpc://" in a[a.index("--storage") + 1] for a in argvs)
    assert all(storage not in " ".join(a) for a in argvs)  # the database only through the proxy
    wait_for(lambda: array_states(proxy_job).get(proxy_job) in OVER | {None}, 60, "the proxy job to stop", poll=1.0)
    report = cli("report", "slurmdet", "--tracking-uri", tracking, timeout=120)  # a later report finds it as today
    assert report.returncode == 0 and "trials: 4 complete, 0 pruned, 0 failed" in report.stdout, report.stderr
    assert "acon_c" in report.stdout and "relu" in report.stdout


@pytest.mark.slow
def test_a_cancelled_task_and_a_preempted_task_lose_nothing_and_run_nothing_twice(tmp_path, stores):
    """Task A gets ``scancel --signal=USR2`` (what SLURM sends before a time limit or a preemption, through
    submitit's ``--signal=USR2@90``): its worker records the trial as interrupted, submitit requeues the task, and
    the requeued task (a new worker process) runs the queued cells, its own interrupted one included. Task B is
    cancelled outright (``scancel``): its trial is recorded as interrupted, its cell queued again. The study then
    completes, in this launcher run or a rerun, with every cell once."""
    storage, tracking = stores
    study_file = write_study(tmp_path, "slurmcut", designs=(SLOW,), seeds=4)
    log = tmp_path / "launcher.log"
    proc = _start(_run_args(study_file, storage, tracking, tmp_path / "logs"), log, ACON_TEST_SLOW="0.1")
    try:
        victims = wait_for(lambda: _two_running(log, study_file, storage), 180, "both SLURM tasks running a trial",
                           poll=0.3)
        preempted, cancelled = (t.user_attrs[attrs.WORKER].rpartition(" slurm:")[2] for t in victims)
        subprocess.run(["scancel", "--signal=USR2", preempted], check=True, timeout=30)
        subprocess.run(["scancel", cancelled], check=True, timeout=30)
        # SLURM holds a requeued job for 120 s before it may start again; an admin may release it at once
        wait_for(lambda: _state(preempted) == "PENDING", 120, "the preempted task requeued", poll=0.3)
        subprocess.run(["scontrol", "update", f"JobId={preempted}", "StartTime=now"], check=True, timeout=30)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text()
    assert code in (0, 1) and f"SLURM task {cancelled}" in said, said[-3000:]
    assert "Requeued job" in next((tmp_path / "logs").glob(f"{preempted}_0_log.out")).read_text()
    trials = _trials(study_file, storage)
    for victim in victims:
        cut = next(t for t in trials if t.number == victim.number)
        assert cut.state.name == "FAIL" and "interrupted" in cut.user_attrs[attrs.FAIL_REASON]
    # the requeued task's new worker process ran trials too
    workers = {t.user_attrs[attrs.WORKER] for t in trials if t.state.name == "COMPLETE"
               and t.user_attrs[attrs.WORKER].endswith(f" slurm:{preempted}")}
    assert len(workers - {victims[0].user_attrs[attrs.WORKER]}) >= 1
    if code == 1 or _unfinished(trials):  # cells left: the rerun runs them
        out = cli(*_run_args(study_file, storage, tracking, tmp_path / "logs"), timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        trials = _trials(study_file, storage)
    done = _each_cell_once(trials)
    assert len(done) == 4 and {v.user_attrs[attrs.CELL_KEY] for v in victims} <= set(done)
    assert _parent_status(tracking, "slurmcut") == "FINISHED"


def _worker_argv(path: Path) -> list[str]:
    """The worker command a task ran, from submitit's pickle of it."""
    import pickle

    with path.open("rb") as f:
        return pickle.load(f).function.argv


def _two_running(log: Path, study_file: str, storage: str):
    """The two RUNNING trials, once both tasks' workers claimed one (their ``worker`` attr set); else None."""
    if "submitted SLURM job array" not in log.read_text():  # the launcher still creates the study
        return None
    try:
        running = [t for t in _trials(study_file, storage) if t.state.name == "RUNNING"]
    except KeyError:
        return None
    return running if len(running) == 2 and all(attrs.WORKER in t.user_attrs for t in running) else None


def _state(task: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", task, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _unfinished(trials) -> bool:
    done = {t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"}
    return bool({t.user_attrs[attrs.CELL_KEY] for t in trials} - done)


@pytest.mark.slow
def test_ctrl_c_cancels_the_array_and_records_the_trials_as_interrupted(tmp_path, stores):
    storage, tracking = stores
    study_file = write_study(tmp_path, "slurmint", designs=(SLOW,), seeds=4)
    log = tmp_path / "launcher.log"
    proc = _start(_run_args(study_file, storage, tracking, tmp_path / "logs"), log, ACON_TEST_SLOW="0.05")
    try:
        wait_for(lambda: _two_running(log, study_file, storage), 180, "both SLURM tasks running a trial", poll=0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text()
    assert code == 130, said[-3000:]
    assert "cancelled SLURM job array" in said and "Traceback" not in said
    trials = _trials(study_file, storage)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 2 and all("interrupted" in t.user_attrs[attrs.FAIL_REASON] for t in failed)
    assert _parent_status(tracking, "slurmint") == "KILLED"
    assert subprocess.run(["squeue", "-h", "-n", "acon-slurmint-quick"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == ""
