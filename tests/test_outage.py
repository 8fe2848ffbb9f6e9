"""Storage outages ridden through, for real: PostgreSQL behind a TCP proxy that the test cuts.

The proxy drops every connection and refuses new ones for a while, as a database restart or a lost
network does; the study must finish by itself with every cell once. Needs ``$ACON_TEST_POSTGRES_URL``
(``source .ci/services.sh``); skips without it.
"""
from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import time

import optuna
import pytest
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from studies.run.options import RunOptions
from studies.run.launch import prepare_study
from studies.store import attrs
from _services import (RELU, SLOW, Partition, TcpProxy, cli, cli_start, fresh_database, postgres_url, wait_for,
                       write_study)

#: Small heartbeat settings (defaults 10 s / 30 s): an outage is many heartbeats long, as a real one is.
HEARTBEAT = {"ACON_HEARTBEAT_INTERVAL": "1", "ACON_HEARTBEAT_GRACE": "3"}


@pytest.fixture
def proxied(tmp_path):
    """A fresh Optuna database on the test server, reached through a proxy: (proxy, URL via proxy, direct URL)."""
    url = postgres_url()
    with fresh_database(url) as direct:
        target = make_url(direct)
        proxy = TcpProxy(target.host, target.port)
        try:
            yield proxy, proxy.url(direct), direct
        finally:
            proxy.cut()


@pytest.fixture
def partitioned(tmp_path):
    """A fresh Optuna database on the test server, reached from a test host of our own through a proxy, and the
    partition between them: (partition, URL from inside it, direct URL). Skips where no partition can be made."""
    why = Partition.available()
    if why:
        pytest.skip(why)
    partition = Partition()
    try:
        with fresh_database(postgres_url()) as direct:
            target = make_url(direct)
            proxy = TcpProxy(target.host, target.port, bind=partition.host_ip)
            try:
                yield partition, proxy.url(direct), direct
            finally:
                proxy.cut()
    finally:
        partition.close()


@pytest.fixture
def stack():
    with contextlib.ExitStack() as stack:
        yield stack


@functools.lru_cache(maxsize=None)
def _storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database: polling must not open a connection per poll."""
    return optuna.storages.RDBStorage(url)


def _trials(direct: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=_storage(direct)).trials


def _done(direct: str, name: str) -> int:
    try:
        return sum(t.state.name == "COMPLETE" for t in _trials(direct, name))
    except KeyError:  # not created yet
        return 0


def _training(direct: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """Trials running with their MLflow run recorded (training, not between two trials)."""
    try:
        return [t for t in _trials(direct, name) if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
    except KeyError:
        return []


def _runs(tracking: str, experiment: str):
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("acon.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("acon.role") == "trial"]


def test_two_workers_ride_through_a_database_outage_with_every_cell_once(tmp_path, proxied, stack):
    proxy, storage, direct = proxied
    # MLflow's store on the same server, through the same proxy: the outage takes both away
    tracking_db = stack.enter_context(fresh_database(postgres_url()))
    tracking = proxy.url(tracking_db)
    study_file = write_study(tmp_path, "outage", designs=(RELU, SLOW), seeds=2, epochs=3)
    log = tmp_path / "run.log"
    proc = cli_start("run", study_file, "--workers", "2", "--storage", storage, "--tracking-uri", tracking,
                     "--device", "cpu", log=log, ACON_TEST_SLOW="0.05", **HEARTBEAT)
    try:
        wait_for(lambda: _done(direct, "outage-quick") >= 1 or proc.poll() is not None, 120, "a first trial")
        assert proc.poll() is None, log.read_text()[-3000:]
        proxy.cut()
        time.sleep(10)  # longer than the heartbeat grace: every heartbeat in the database is stale after it
        cut_off = _done(direct, "outage-quick")
        proxy.restore()
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert code == 0, err[-3000:]
    assert cut_off < 4, "the study finished before the outage: it proves nothing"
    assert "storage unreachable since" in err and "retrying for up to 5 min" in err and "storage reachable again" in err

    trials = _trials(direct, "outage-quick")
    complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 4  # every cell once
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    parents, children = _runs(tracking_db, "outage")
    reasons = {r.info.run_id: r.data.tags.get("acon.fail_reason") for r in children}
    assert not [t for t in trials if t.state.name == "FAIL" and not attrs.is_spurious(t)], \
        [(t.number, t.user_attrs, reasons.get(t.user_attrs.get("mlflow_run_id"))) for t in trials
         if t.state.name == "FAIL"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials
                                                             if "mlflow_run_id" in t.user_attrs)
    assert {r.info.status for r in children} == {"FINISHED"}


def test_an_outage_past_the_limit_ends_in_one_line_and_a_rerun_completes_the_study(tmp_path, proxied):
    proxy, storage, direct = proxied
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    study_file = write_study(tmp_path, "bound", designs=(RELU, SLOW), seeds=2, epochs=2)
    args = ("run", study_file, "--workers", "2", "--storage", storage, "--tracking-uri", tracking, "--device", "cpu",
            "--no-progress")
    log = tmp_path / "run.log"
    proc = cli_start(*args, "--outage-limit", "3s", log=log, ACON_TEST_SLOW="0.05", **HEARTBEAT)
    try:
        wait_for(lambda: _done(direct, "bound-quick") >= 1 or proc.poll() is not None, 120, "a first trial")
        # the cut lands while a trial trains (its MLflow run recorded): that trial is cut short, and must say why
        wait_for(lambda: _training(direct, "bound-quick") or proc.poll() is not None, 120, "a trial training")
        assert proc.poll() is None, log.read_text()[-3000:]
        proxy.cut()
        code = proc.wait(timeout=120)  # the limit passes while the storage is still away
    finally:
        if proc.poll() is None:
            proc.kill()
    proxy.restore()
    lines = log.read_text().strip().splitlines()
    assert code == 2, lines[-20:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "unreachable since" in errors[0] and "longer than the 3 s limit" in errors[0], lines
    assert "rerun the same command" in errors[0] and "acon:***@" in errors[0] and "Traceback" not in log.read_text()
    assert lines[-1] == errors[0]  # the last word
    parents, _ = _runs(tracking, "bound")
    assert [p.info.status for p in parents] == ["FAILED"]

    # the trials the store never heard finish have stale heartbeats: the rerun fails them and runs their cells
    rerun = cli(*args, timeout=300, ACON_TEST_SLOW="0.05", **HEARTBEAT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = _trials(direct, "bound-quick")
    complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 4  # nothing lost, nothing twice
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    parents, children = _runs(tracking, "bound")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert "RUNNING" not in {r.info.status for r in children}
    cut_short = [r for r in children if r.info.status != "FINISHED"]  # the trials the outage cut short say why
    assert cut_short and all("unreachable since" in r.data.tags.get("acon.fail_reason", "") for r in cut_short), \
        [(r.info.status, r.data.tags) for r in cut_short]


def test_a_worker_cut_off_longer_than_the_grace_loses_its_trial_and_its_late_result_stays_out(tmp_path, proxied):
    proxy, storage, direct = proxied
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    study_file = write_study(tmp_path, "late", designs=(RELU, SLOW), seeds=2, epochs=3)
    prepared = prepare_study(study_file, RunOptions(storage=direct, tracking_uri=tracking, progress=False))
    assert prepared.counts == {"WAITING": 4}

    def worker(url: str, name: str, slow: str) -> subprocess.Popen:
        return cli_start("worker", study_file, "--storage", url, "--tracking-uri", tracking, "--device", "cpu",
                         "--threads", "1", "--no-progress", log=tmp_path / f"{name}.log", ACON_TEST_SLOW=slow,
                         **HEARTBEAT)

    cut_off = worker(storage, "cut_off", "0.3")  # through the proxy, slow: still training when the cut comes
    others = None
    try:
        mine = wait_for(lambda: [t for t in _trials(direct, "late-quick") if t.state.name == "RUNNING"
                                 and t.user_attrs.get("worker", "").endswith(f":{cut_off.pid}")
                                 and "mlflow_run_id" in t.user_attrs], 120, "its trial training")
        proxy.cut()
        others = worker(direct, "others", "0")  # never cut off: fails the silent trial and runs its cell again
        key = mine[0].user_attrs[attrs.CELL_KEY]
        wait_for(lambda: [t for t in _trials(direct, "late-quick") if attrs.key_of(t) == key
                          and t.state.name == "COMPLETE"], 120, "the cell run again")
        proxy.restore()
        codes = [cut_off.wait(timeout=120), others.wait(timeout=120)]
    finally:
        for p in (cut_off, others):
            if p is not None and p.poll() is None:
                p.kill()
    assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("cut_off", "others")]

    trials = _trials(direct, "late-quick")
    complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 4  # the late result is not a second copy of its cell
    first = trials[mine[0].number]
    assert first.state.name == "FAIL"
    rerun = next(t for t in trials if attrs.key_of(t) == key and t.state.name == "COMPLETE")
    assert rerun.user_attrs["retry_of"] == first.number

    client = MlflowClient(tracking)
    late = client.get_run(first.user_attrs["mlflow_run_id"])
    assert late.info.status == "FAILED"
    assert late.data.tags["acon.late_result"].startswith("val_acc=")
    reason = late.data.tags["acon.fail_reason"]
    assert reason.startswith("late result: val_acc=") and "heartbeats" in reason and f"trial #{rerun.number}" in reason
    again = client.get_run(rerun.user_attrs["mlflow_run_id"])
    assert again.info.status == "FINISHED"
    assert again.data.tags["acon.retry_of"].startswith(f"trial #{first.number}")
    assert "late result" in again.data.tags["acon.retry_of"]
    # where the MLflow UI shows them whole: each run's description
    assert late.data.tags["mlflow.note.content"].startswith("**Not counted.** Late result: val_acc=")
    assert again.data.tags["mlflow.note.content"].startswith(f"Runs again the cell of trial #{first.number}")


def _partitioned_pair(tmp_path, partition, storage: str, direct: str, name: str, *limit: str):
    """Two workers of a prepared 4-cell study: ``cut_off`` inside the partition's test host (slow: still training
    when the cut comes), ``others`` on this host; the cut comes once cut_off's trial is training. Returns
    (cut_off, others, its trial, tracking URI); the partition is still cut."""
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    study_file = write_study(tmp_path, name, designs=(RELU, SLOW), seeds=2, epochs=3)
    prepare_study(study_file, RunOptions(storage=direct, tracking_uri=tracking, progress=False))

    def worker(url: str, who: str, slow: str, inside=None) -> subprocess.Popen:
        return cli_start("worker", study_file, "--storage", url, "--tracking-uri", tracking, "--device", "cpu",
                         "--threads", "1", "--no-progress", *limit, log=tmp_path / f"{who}.log", inside=inside,
                         ACON_TEST_SLOW=slow, **HEARTBEAT)

    cut_off = worker(storage, "cut_off", "0.3", inside=partition)
    mine = wait_for(lambda: [t for t in _training(direct, f"{name}-quick")
                             if t.user_attrs.get("worker", "").endswith(f":{cut_off.pid}")]
                    or cut_off.poll() is not None, 120, "its trial training")
    assert cut_off.poll() is None, (tmp_path / "cut_off.log").read_text()[-3000:]
    partition.cut()
    return cut_off, worker(direct, "others", "0"), mine[0], tracking


def _end_pair(tmp_path, partition, cut_off, others, first=lambda: None) -> tuple[list[int], dict[str, str]]:
    """Run ``first``, wait for both workers, heal the partition (whatever happens): their exit codes and logs."""
    try:
        first()
        codes = [cut_off.wait(timeout=180), others.wait(timeout=150)]
    finally:
        partition.heal()
        for p in (cut_off, others):
            if p.poll() is None:
                p.kill()
    return codes, {n: (tmp_path / f"{n}.log").read_text() for n in ("cut_off", "others")}


def test_a_silent_partition_of_one_worker_loses_nothing_and_every_side_says_what_happened(tmp_path, partitioned):
    """No reset, no answer: one worker's packets are dropped while it trains. The other fails its trial as stale and
    runs the cell again; when the network heals, the cut-off worker learns at its next report that its trial was
    taken over, stops it and records a late result. Both exit 0, every cell once, and the Optuna trial, both MLflow
    runs and both workers' output say what happened."""
    partition, storage, direct = partitioned
    cut_off, others, mine, tracking = _partitioned_pair(tmp_path, partition, storage, direct, "silent")
    key = mine.user_attrs[attrs.CELL_KEY]

    def rerun_then_heal() -> None:
        wait_for(lambda: [t for t in _trials(direct, "silent-quick") if attrs.key_of(t) == key
                          and t.state.name == "COMPLETE"], 120, "the cell run again")
        partition.heal()

    codes, logs = _end_pair(tmp_path, partition, cut_off, others, first=rerun_then_heal)
    assert codes == [0, 0], {n: text[-2000:] for n, text in logs.items()}

    trials = _trials(direct, "silent-quick")
    complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 4 and not [t for t in trials if t.state.name == "RUNNING"]
    first = trials[mine.number]
    reason = first.user_attrs["fail_reason"]  # Optuna: who failed it, and why
    assert first.state.name == "FAIL" and reason.startswith("its worker stopped sending heartbeats: no heartbeat "
                                                            f"from {mine.user_attrs['worker']} for over the 3 s grace")
    assert f"failed by {socket.gethostname()}:{others.pid} at " in reason
    late = MlflowClient(tracking).get_run(first.user_attrs["mlflow_run_id"])  # MLflow: the late run
    assert late.info.status == "FAILED" and late.data.tags["acon.late_result"].startswith("val_acc=")
    assert late.data.tags["mlflow.note.content"].startswith("**Not counted.** Late result: val_acc=")
    assert reason.splitlines()[0] in late.data.tags["acon.fail_reason"]
    # the workers' output: the judge says whose trial it failed and why, the cut-off one that its result is late
    assert f"trial #{first.number} (" in logs["others"] and "failed: its worker stopped sending heartbeats" in logs[
        "others"]
    assert f"trial #{first.number}: late result: val_acc=" in logs["cut_off"]
    assert "Traceback" not in logs["cut_off"] + logs["others"]


def test_a_partition_longer_than_the_outage_limit_ends_its_worker_in_one_line_and_loses_nothing(tmp_path,
                                                                                               partitioned):
    """The partition outlasts the cut-off worker's 8 s outage limit: no call of it hangs (its connections time
    out), so it ends by itself while the network is still cut, in one error line with exit code 2. The other
    worker runs every cell, each once."""
    partition, storage, direct = partitioned
    cut_off, others, mine, tracking = _partitioned_pair(tmp_path, partition, storage, direct, "long",
                                                        "--outage-limit", "8s")
    codes, logs = _end_pair(tmp_path, partition, cut_off, others)  # still cut: it must give up by itself
    assert codes == [2, 0], {n: text[-2000:] for n, text in logs.items()}
    errors = [line for line in logs["cut_off"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unreachable since" in errors[0] and "longer than the 8 s limit" in errors[0]
    assert "Traceback" not in logs["cut_off"]
    trials = _trials(direct, "long-quick")
    complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 4 and not [t for t in trials if t.state.name == "RUNNING"]
    first = trials[mine.number]
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"].startswith(
        "its worker stopped sending heartbeats")
    run = MlflowClient(tracking).get_run(first.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags.get("acon.fail_reason")
