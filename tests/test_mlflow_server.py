"""Trials logged through a real ``mlflow server`` by launcher-started workers, read back over REST.

The server runs on a free port of 127.0.0.1 with a SQLite backend; the Optuna storage is a
journal file. One worker is SIGKILLed mid-trial: the launcher fails its trial, queues the
cell again and starts another worker, so the study still completes.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest

from studies.run.options import RunOptions
from studies.run.workers import run_workers
from studies.store import attrs
from _services import HANG, RELU, mlflow_server, rest, wait_for, write_study


def _run_in_thread(study_file: str, options: RunOptions, workers: int) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = run_workers(study_file, options, workers=workers)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_workers_log_through_the_server_and_a_killed_worker_is_replaced(tmp_path, monkeypatch):
    marker = tmp_path / "hang.pid"
    monkeypatch.setenv("ACON_TEST_HANG_FILE", str(marker))  # inherited by the worker processes
    study_file = write_study(tmp_path, "served", designs=(RELU, HANG))
    with mlflow_server(tmp_path) as url:
        options = RunOptions(storage=f"journal:///{tmp_path}/optuna.journal", tracking_uri=url, progress=False,
                             device="cpu")
        thread, out = _run_in_thread(study_file, options, workers=2)
        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 120, "a worker hanging in a trial"))
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=180)
        assert not thread.is_alive() and "error" not in out, out.get("error")
        result = out["result"]
        experiment = rest(url, "experiments/get-by-name", experiment_name="served")["experiment"]
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
        children = [r for r in runs if tags[r["info"]["run_id"]].get("acon.role") == "trial"]
        parents = [r for r in runs if tags[r["info"]["run_id"]].get("acon.role") == "parent"]
        done = [c for c in children if c["info"]["status"] == "FINISHED"]
        history = rest(url, "metrics/get-history", run_id=done[0]["info"]["run_id"], metric_key="val/acc")

    assert result.counts == {"COMPLETE": 4, "FAIL": 1} and result.missing == 0
    trials = result.study.trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs[attrs.CELL_KEY] for t in complete}) == 4
    killed = [t for t in trials if t.state.name == "FAIL"][0]
    assert killed.user_attrs["worker"].endswith(f":{pid}") and "SIGKILL" in killed.user_attrs["fail_reason"]

    # over REST: one parent FINISHED, one child run per trial under it, the killed one FAILED
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    assert sorted(c["info"]["run_id"] for c in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert {tags[c["info"]["run_id"]]["mlflow.parentRunId"] for c in children} == {parent_id}
    assert sorted(c["info"]["status"] for c in children) == ["FAILED"] + ["FINISHED"] * 4
    failed = next(c for c in children if c["info"]["status"] == "FAILED")
    assert failed["info"]["run_id"] == killed.user_attrs["mlflow_run_id"]
    assert "SIGKILL" in tags[failed["info"]["run_id"]]["acon.fail_reason"]
    params = [{p["key"]: p["value"] for p in c["data"]["params"]} for c in done]
    assert sorted((p["activation"], p["seed"]) for p in params) == [("relu", "0"), ("relu", "1"),
                                                                    ("test_hang", "0"), ("test_hang", "1")]
    assert [m["step"] for m in history["metrics"]] == [1, 2]
    values = {t.user_attrs["mlflow_run_id"]: t.value for t in complete}
    for c in done:
        final = {m["key"]: m["value"] for m in c["data"]["metrics"]}["final/val_acc"]
        assert final == pytest.approx(values[c["info"]["run_id"]], rel=1e-5)  # MLflow keeps 6 digits
