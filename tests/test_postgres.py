"""Worker processes on a real PostgreSQL storage (no mock): cells once, one child run each, kills retried.

Needs ``$ACON_TEST_POSTGRES_URL`` (``source .ci/services.sh``); skips without it. Each test gets
fresh databases (Optuna and MLflow) and drops them after.
"""
from __future__ import annotations

import os
import signal
import socket

import optuna
import pytest
from mlflow import MlflowClient

from studies.run.options import RunOptions
from studies.run.launch import prepare_study
from studies.store import attrs
from _services import HANG, RELU, cli_all, cli_start, fresh_database, postgres_url, table_names, wait_for, \
    write_study

#: Small heartbeat settings so a dead worker's trial is noticed in seconds (defaults: 10 s / 30 s).
HEARTBEAT = {"ACON_HEARTBEAT_INTERVAL": "1", "ACON_HEARTBEAT_GRACE": "3"}


@pytest.fixture
def databases():
    """Fresh Optuna and MLflow databases on the test server."""
    url = postgres_url()
    with fresh_database(url) as storage, fresh_database(url) as tracking:
        yield storage, tracking


def _worker_args(study_file: str, storage: str, tracking: str) -> tuple[str, ...]:
    return ("worker", study_file, "--storage", storage, "--tracking-uri", tracking, "--device", "cpu",
            "--threads", "1", "--no-progress")


def test_two_workers_run_each_cell_once_and_a_sigkilled_workers_trial_is_retried(tmp_path, databases, monkeypatch):
    storage, tracking = databases
    for key, value in HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    study_file = write_study(tmp_path, "pgwork", designs=(RELU, HANG))
    prepared = prepare_study(study_file, RunOptions(storage=storage, tracking_uri=tracking, progress=False))
    assert prepared.counts == {"WAITING": 4}

    # the first worker to train a test_hang cell writes its pid and hangs (heartbeats still beating)
    marker = tmp_path / "hang.pid"
    procs = [cli_start(*_worker_args(study_file, storage, tracking), log=tmp_path / f"worker{i}.log",
                       ACON_TEST_HANG_FILE=str(marker), **HEARTBEAT) for i in range(2)]
    try:
        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 120, "a worker hanging in a trial"))
        os.kill(pid, signal.SIGKILL)
        codes = {p.pid: p.wait(timeout=120) for p in procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    survivor = next(p for p in procs if p.pid != pid)
    assert codes[pid] == -signal.SIGKILL
    assert codes[survivor.pid] == 0, (tmp_path / f"worker{procs.index(survivor)}.log").read_text()[-2000:]

    trials = optuna.load_study(study_name="pgwork-quick", storage=storage).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    keys = [t.user_attrs[attrs.CELL_KEY] for t in complete]
    assert len(keys) == 4 and len(set(keys)) == 4  # every cell exactly once
    killed = [t for t in trials if t.user_attrs.get(attrs.WORKER) == f"{socket.gethostname()}:{pid}"
              and t.state.name != "COMPLETE"]
    assert [t.state.name for t in killed] == ["FAIL"]
    assert killed[0].params["activation"] == "test_hang" and killed[0].user_attrs[attrs.CELL_KEY] in keys
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert not [t for t in trials if attrs.is_spurious(t)]

    # MLflow: exactly one child run per trial, all under the one parent; the killed one FAILED
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("pgwork")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("acon.role") == "parent"]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("acon.role") == "trial"}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parents[0].info.run_id}
    statuses = sorted(r.info.status for r in children.values())
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "FINISHED"]
    dead = children[killed[0].user_attrs["mlflow_run_id"]]
    assert dead.info.status == "FAILED" and "heartbeat" in dead.data.tags["acon.fail_reason"]
    for t in complete:
        assert children[t.user_attrs["mlflow_run_id"]].data.metrics["final/val_acc"] == pytest.approx(t.value, rel=1e-5)  # MLflow keeps 6 digits


def test_wrong_password_and_unknown_study_fail_in_one_line_and_leave_nothing(tmp_path, databases):
    storage, tracking = databases
    study_file = write_study(tmp_path, "pgbad")
    prepare_study(study_file, RunOptions(storage=storage, tracking_uri=tracking, progress=False))
    tables = table_names(storage)
    wrong = storage.replace("acon:acon@", "acon:not-the-password@", 1)
    assert wrong != storage
    mlflow_file = tmp_path / "untouched-mlflow.db"

    bad_password, unknown = cli_all(
        ("run", study_file, "--storage", wrong, "--tracking-uri", f"sqlite:///{mlflow_file}"),
        ("worker", study_file, "--storage", storage, "--tracking-uri", tracking, "--study-name", "nope"))

    for result, words in ((bad_password, "password authentication failed"), (unknown, "no study named 'nope'")):
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and words in lines[0]
        assert "not-the-password" not in lines[0]
    assert not mlflow_file.exists()
    assert table_names(storage) == tables
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    assert names == ["pgbad-quick"]
    assert sorted(e.name for e in MlflowClient(tracking).search_experiments()) == ["Default", "pgbad"]
