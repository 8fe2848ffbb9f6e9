"""Storage outages ridden through, for real: PostgreSQL behind a TCP proxy that the test cuts.

The proxy drops every connection and refuses new ones for a while, as a database restart or a lost
network does; the study must finish by itself with every cell once. Needs ``$ACON_TEST_POSTGRES_URL``
(``source .ci/services.sh``); skips without it.
"""
from __future__ import annotations

import time

import optuna
import pytest
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from _services import RELU, SLOW, TcpProxy, cli, cli_start, fresh_database, postgres_url, wait_for, write_study

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


def _trials(direct: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=direct).trials


def _done(direct: str, name: str) -> int:
    try:
        return sum(t.state.name == "COMPLETE" for t in _trials(direct, name))
    except KeyError:  # not created yet
        return 0


def _runs(tracking: str, experiment: str):
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("acon.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("acon.role") == "trial"]


def test_two_workers_ride_through_a_database_outage_with_every_cell_once(tmp_path, proxied):
    proxy, storage, direct = proxied
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    study_file = write_study(tmp_path, "outage", designs=(RELU, SLOW), seeds=3, epochs=4)
    log = tmp_path / "run.log"
    proc = cli_start("run", study_file, "--workers", "2", "--storage", storage, "--tracking-uri", tracking,
                     "--device", "cpu", log=log, ACON_TEST_SLOW="0.05", **HEARTBEAT)
    try:
        wait_for(lambda: _done(direct, "outage-quick") >= 1 or proc.poll() is not None, 120, "a first trial")
        assert proc.poll() is None, log.read_text()[-3000:]
        proxy.cut()
        time.sleep(12)  # longer than the heartbeat grace: every heartbeat in the database is stale after it
        cut_off = _done(direct, "outage-quick")
        proxy.restore()
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert code == 0, err[-3000:]
    assert cut_off < 6, "the study finished before the outage: it proves nothing"
    assert "storage unreachable since" in err and "retrying for up to 5 min" in err and "reachable again" in err

    trials = _trials(direct, "outage-quick")
    complete = [t.user_attrs["cell_key"] for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 6  # every cell once
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert not [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("spurious")], \
        [(t.number, t.user_attrs.get("fail_reason")) for t in trials if t.state.name == "FAIL"]
    parents, children = _runs(tracking, "outage")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials
                                                             if "mlflow_run_id" in t.user_attrs)
    assert {r.info.status for r in children} == {"FINISHED"}
