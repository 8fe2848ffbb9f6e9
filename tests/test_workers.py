"""Worker processes on this machine: the launcher's checks, Ctrl-C, duplicate cells, bad input via the CLI.

Stores are real files (a journal for Optuna, SQLite for MLflow); the CLI runs in subprocesses.
PostgreSQL and the MLflow server have their own test files.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading

import optuna
import pytest
from mlflow import MlflowClient

from studies.errors import UserError
from studies.run.options import RunOptions
from studies.run.launch import prepare_study, run_study
from studies.spec import Study
from studies.store.storage import open_storage, resolve_storage
from studies.run.options import from_args, worker_command
from studies.run.workers import Launcher, check_gpus, check_workers, parse_gpus, run_workers, threads_per_worker, \
    worker_env
from studies.store import attrs
from _services import CRASH, HANG, RELU, cli_all, free_port, wait_for, write_study


def _options(tmp_path, **kw) -> RunOptions:
    return RunOptions(storage=f"journal:///{tmp_path}/optuna.journal", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      progress=False, device="cpu", **kw)


def _trials(tmp_path, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(f"journal:///{tmp_path}/optuna.journal")).trials


def _runs(tmp_path, experiment: str):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    return ([r for r in runs if r.data.tags["acon.role"] == "trial"],
            [r for r in runs if r.data.tags["acon.role"] == "parent"])


def test_sqlite_with_several_workers_is_refused_before_anything_is_written(tmp_path):
    study_file = write_study(tmp_path, "refused")
    options = RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match=r"cannot take 2 writers; use --storage journal:///.* or --storage postgres"):
        run_workers(study_file, options, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refused.py"]
    check_workers(1, "sqlite:///one-writer.db")  # one worker process is one writer


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_worker_count_must_be_a_positive_integer(workers):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        check_workers(workers, "journal:///x.journal")


def test_workers_need_a_study_they_can_load_and_known_settings(tmp_path):
    study = Study(name="inline", doc="not loadable by name", designs=(RELU,))
    with pytest.raises(UserError, match="a .py file defining STUDY"):
        run_workers(study, _options(tmp_path), workers=2)
    with pytest.raises(UserError, match=r"unknown setting 'epoch' in the overrides; valid settings: act_every, act_images, amp, augment, "):
        worker_command("x.py", _options(tmp_path, overrides={"epoch": 3}))


def test_every_setting_travels_to_a_worker_and_parses_back_to_the_same_overrides():
    from run_study import build_parser

    overrides = {"limit": 10, "augment": False, "nesterov": True, "lr": 0.05, "n_trials": 4, "schedule": "linear",
                 "warmup_epochs": 0.5, "model": "resnet20", "seeds": None}
    options = RunOptions(overrides=overrides, storage="journal:///s/o.journal", tracking_uri="http://h:5000",
                         experiment="exp", study_name="custom", preset="default", device="cpu", data_dir="/data",
                         threads=3, outage_limit="90s", progress=False)
    cmd = worker_command("variants", options)
    assert "--no-augment" in cmd and "--nesterov" in cmd and cmd[cmd.index("--trials") + 1] == "4"
    parsed = from_args(build_parser().parse_args(cmd[3:]))
    assert {k: v for k, v in parsed.overrides.items() if v is not None} == {k: v for k, v in overrides.items() if v is not None}
    # the one converter, both ways: every option a worker takes comes back as it was given (threads as a string
    # parses back to the int; the launcher's own race, download and max_trials are not a worker's)
    assert dataclasses.replace(parsed, overrides=options.overrides) == options
    assert Study(name="s", doc="d", designs=(RELU,)).settings("quick", parsed.overrides).warmup_epochs == 0.5


def test_worker_command_joins_the_same_stores_with_the_cores_split():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores and threads_per_worker(2) == max(1, cores // 2)
    assert threads_per_worker(10 * cores) == 1
    options = RunOptions(storage="journal:///s/o.journal", tracking_uri="http://h:5000", preset="default",
                         overrides={"epochs": 3, "seeds": None}, study_name="custom", device="cuda", threads=4)
    cmd = worker_command("variants", options)
    assert cmd[1:5] == ["-m", "run_study", "worker", "variants"]
    flags = cmd[5:]
    flags.remove("--no-progress")  # workers' bars would interleave; the launcher shows one
    assert dict(zip(flags[::2], flags[1::2])) == {"--storage": "journal:///s/o.journal", "--tracking-uri": "http://h:5000", "--preset": "default",
                     "--device": "cuda", "--threads": "4", "--epochs": "3", "--study-name": "custom"}


def test_a_duplicated_cell_runs_once_and_is_left_out_of_counts_and_mlflow(tmp_path):
    study_file = write_study(tmp_path, "dup", designs=(RELU,))
    prepared = prepare_study(study_file, _options(tmp_path))
    first = prepared.study.trials[0]
    # what two workers enqueueing the same failed cell at once would leave behind
    prepared.study.enqueue_trial({}, user_attrs=dict(first.user_attrs))
    result = run_study(study_file, _options(tmp_path), join=True)
    assert result.counts == {"COMPLETE": 2} and result.ran == 2 and result.missing == 0
    trials = _trials(tmp_path, "dup-quick")
    dropped = [t for t in trials if attrs.is_spurious(t)]
    assert [(t.number, t.state.name, t.user_attrs["duplicate_of"]) for t in dropped] == [(2, "FAIL", 0)]
    assert "mlflow_run_id" not in dropped[0].user_attrs
    children, _ = _runs(tmp_path, "dup")
    assert len(children) == 2


def test_of_two_running_duplicates_the_later_started_one_steps_back(tmp_path):
    from studies.run.queue import duplicate_of

    study_file = write_study(tmp_path, "race", designs=(RELU,), seeds=1)
    study = prepare_study(study_file, _options(tmp_path)).study
    study.enqueue_trial({}, user_attrs=dict(study.trials[0].user_attrs))
    early, late = study.ask(), study.ask()  # both RUNNING, same cell, as two workers would hold them
    assert early.user_attrs[attrs.CELL_KEY] == late.user_attrs[attrs.CELL_KEY]
    assert duplicate_of(study, late) == early.number
    assert duplicate_of(study, early) is None


def test_ctrl_c_in_the_launcher_stops_its_workers_and_a_rerun_completes_without_duplicates(tmp_path, monkeypatch):
    marker = tmp_path / "hang.pid"
    monkeypatch.setenv("ACON_TEST_HANG_FILE", str(marker))
    study_file = write_study(tmp_path, "ctrlc", designs=(HANG, RELU))

    def press_ctrl_c() -> None:
        wait_for(lambda: marker.exists() and marker.read_text(), 120, "a worker hanging in a trial")
        os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C sends to the launcher

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        run_workers(study_file, _options(tmp_path), workers=2)
    presser.join()
    hung_pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(hung_pid, 0)  # the worker is gone

    trials = _trials(tmp_path, "ctrlc-quick")
    assert not [t for t in trials if t.state.name == "RUNNING"]
    hung = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{hung_pid}") and t.state.name == "FAIL"]
    assert len(hung) == 1 and "interrupted" in hung[0].user_attrs["fail_reason"]
    children, parents = _runs(tmp_path, "ctrlc")
    assert "RUNNING" not in {r.info.status for r in children}
    assert [p.info.status for p in parents] == ["KILLED"]

    rerun = run_study(study_file, _options(tmp_path))  # one process; the marker exists, nothing hangs now
    assert rerun.missing == 0 and rerun.counts["COMPLETE"] == 4
    done = [t.user_attrs[attrs.CELL_KEY] for t in rerun.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == len(set(done)) == 4
    children, parents = _runs(tmp_path, "ctrlc")
    assert len(children) == len(rerun.study.trials) and [p.info.status for p in parents] == ["FINISHED"]


def test_bad_stores_and_names_fail_in_one_line_and_leave_nothing_behind(tmp_path):
    study_file = write_study(tmp_path, "badin")
    journal = tmp_path / "existing.journal"
    prepare_study(study_file, RunOptions(storage=f"journal:///{journal}", tracking_uri=f"sqlite:///{tmp_path}/prep.db"))
    before = journal.read_bytes()
    closed = free_port()
    cases = [
        (("worker", study_file, "--storage", f"postgresql+psycopg://acon:secret@127.0.0.1:{closed}/db",
          "--tracking-uri", f"sqlite:///{tmp_path}/m1.db"), "cannot open Optuna storage", "m1.db"),
        (("worker", study_file, "--storage", f"journal:///{tmp_path}/missing.journal",
          "--tracking-uri", f"sqlite:///{tmp_path}/m2.db"), "no Optuna storage at", "m2.db"),
        (("worker", study_file, "--storage", f"journal:///{journal}", "--study-name", "nope",
          "--tracking-uri", f"sqlite:///{tmp_path}/m3.db"), "no study named 'nope'", "m3.db"),
        (("run", study_file, "--workers", "2", "--storage", f"sqlite:///{tmp_path}/o4.db",
          "--tracking-uri", f"sqlite:///{tmp_path}/m4.db"), "cannot take 2 writers", "m4.db"),
        (("worker", study_file, "--storage", f"journal:///{journal}",
          "--tracking-uri", f"http://127.0.0.1:{closed}"), "cannot reach MLflow tracking store", None),
    ]
    results = cli_all(*(args for args, _, _ in cases))
    for (args, words, _), result in zip(cases, results):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr[-3000:])
        assert lines[0].startswith("error: ") and words in lines[0], lines
        assert "secret" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["badin.py", "existing.journal", "prep.db"]
    assert journal.read_bytes() == before


def test_the_default_store_takes_several_writers_and_a_rerun_finds_the_study_where_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACON_STORAGE", raising=False)
    journal = f"journal://{tmp_path}/optuna.journal"
    assert resolve_storage(study="s-quick") == "sqlite:///optuna.db"
    assert resolve_storage(study="s-quick", workers=2) == journal
    assert not list(tmp_path.iterdir())  # looking creates no file
    optuna.create_study(study_name="s-quick", storage=open_storage(journal))
    assert resolve_storage(study="s-quick") == journal  # one worker (or `worker`, `report`) resumes it there
    assert resolve_storage(study="new-quick") == "sqlite:///optuna.db"
    optuna.create_study(study_name="t-quick", storage="sqlite:///optuna.db")
    assert resolve_storage(study="t-quick", workers=2) == "sqlite:///optuna.db"  # then refused: one writer
    with pytest.raises(UserError, match="cannot take 2 writers"):
        check_workers(2, resolve_storage(study="t-quick", workers=2))
    assert resolve_storage("sqlite:///x.db", study="s-quick", workers=2) == "sqlite:///x.db"
    monkeypatch.setenv("ACON_STORAGE", "journal:///env.journal")
    assert resolve_storage(study="s-quick") == "journal:///env.journal"


def test_several_workers_with_default_stores_just_work(tmp_path, monkeypatch):
    from studies.run import launch, workers

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACON_STORAGE", raising=False)
    resolved, real = [], launch.resolve
    counting = lambda *a, **k: resolved.append(real(*a, **k)) or resolved[-1]  # noqa: E731
    monkeypatch.setattr(workers, "resolve", counting)
    monkeypatch.setattr(launch, "resolve", counting)
    study_file = write_study(tmp_path, "deflt", designs=(RELU,))
    options = RunOptions(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False, device="auto")
    result = run_workers(study_file, options, workers=2, gpus=(0, 1))
    assert result.counts == {"COMPLETE": 2} and result.missing == 0
    assert len(resolved) == 1  # the launcher resolves the study once (it was four times: each check built its own)
    assert result.storage == f"journal://{tmp_path}/optuna.journal" and not (tmp_path / "optuna.db").exists()
    again = run_study(study_file, RunOptions(tracking_uri=options.tracking_uri, progress=False, device="cpu"))
    assert again.ran == 0 and again.storage == result.storage  # the one-process rerun resumes the same study


def test_a_worker_that_crashes_shows_the_end_of_its_log_and_its_trial_says_why(tmp_path, monkeypatch, capsys):
    """A bug that kills a worker (exit code 3, not a trial's error): its log lives in a temporary folder that goes
    with the run, so the launcher prints its end, and the trial's reason holds its last line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACON_STORAGE", raising=False)
    study_file = write_study(tmp_path, "crash", designs=(CRASH,), seeds=2)
    store = f"journal://{tmp_path}/optuna.journal"
    options = RunOptions(storage=store, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False, device="cpu")
    with pytest.raises(RuntimeError, match=r"failed \(exit code 3\): test_dies: the worker's last words$"):
        run_workers(study_file, options, workers=1)  # a bug is not run again and again: no new worker, a cell left
    err = capsys.readouterr().err
    assert err.count("failed (exit code 3); the end of its log:\n") == 1, err
    assert "\n  test_dies: the worker's last words\n" in err, err
    storage = open_storage(store)
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert sorted(t.state.name for t in trials) == ["FAIL", "WAITING"]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.user_attrs[attrs.FAIL_REASON].endswith("(exit code 3): test_dies: the worker's last words")


def test_each_worker_gets_its_threads_and_one_gpu_round_robin(tmp_path, monkeypatch):
    from studies.run import workers

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2)
    started = []

    class FakeProcess:
        def __init__(self, cmd, env, **_):
            started.append(env)
            self.pid = 10 + len(started)

    monkeypatch.setattr(workers.subprocess, "Popen", FakeProcess)
    launcher = Launcher("s", None, RunOptions(storage="journal:///x.journal", threads=3), tmp_path, prepared=None,
                         gpus=(2, 5))
    for _ in range(3):
        launcher._start()
    assert [e["CUDA_VISIBLE_DEVICES"] for e in started] == ["2", "5", "2"]
    assert {(e["OMP_NUM_THREADS"], e["MKL_NUM_THREADS"]) for e in started} == {("3", "3")}


@pytest.mark.parametrize("text, device, message", [
    ("0,x", "auto", r"--gpus takes comma-separated GPU indices \(integers >= 0, e.g. 0,1\), got '0,x'"),
    ("-1", "cuda", "--gpus takes comma-separated GPU indices"),
    ("0,1", "cpu", "--gpus 0,1 needs --device cuda or auto, not cpu"),
])
def test_bad_gpus_are_refused_with_what_is_valid(text, device, message):
    with pytest.raises(UserError, match=message):
        check_gpus(parse_gpus(text), device)


def test_gpus_parse_to_indices():
    assert parse_gpus("0,1,3") == (0, 1, 3) and parse_gpus(None) == () and parse_gpus("2") == (2,)
