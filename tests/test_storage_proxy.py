"""The gRPC storage proxy for real: Optuna's proxy in front of the test PostgreSQL, killed and restarted mid-study.

The study is ``benchmarks/sleep_study.py`` (its loop sleeps instead of training). The restart test needs
``$ACON_TEST_POSTGRES_URL`` (``source .ci/services.sh``) and skips without it; the others serve a SQLite file
through an in-process proxy, or reach no proxy at all.
"""
from __future__ import annotations

import functools
import signal
import threading
import time

import optuna
import pytest

from studies.errors import UserError
from studies.run.workers import check_workers
from studies.store import attrs
from studies.store.outage import describe_failure, is_transient
from studies.store.proxy_client import ProxyStorage, ProxyUnreachable, open_proxy
from studies.store.storage import fail_stale_trials, open_storage, resolve_storage
from _services import ROOT, cli, cli_start, fresh_database, free_port, postgres_url, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
pytest.importorskip("grpc", reason="the storage proxy needs grpcio (pip install .[cluster], part of .[test])")

STUDY_FILE = str(ROOT / "benchmarks" / "sleep_study.py")
#: Small heartbeat settings (defaults 10 s / 30 s), so that the proxy's outage is many heartbeats long.
HEARTBEAT = {"ACON_HEARTBEAT_INTERVAL": "1", "ACON_HEARTBEAT_GRACE": "3"}


@functools.lru_cache(maxsize=None)
def _direct(url: str) -> optuna.storages.RDBStorage:
    """One storage (one pool) per database, straight to PostgreSQL: the test's view, not the proxy's."""
    return optuna.storages.RDBStorage(url)


def _trials(url: str, name: str = "sleep-quick") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=_direct(url)).trials
    except KeyError:  # not created yet
        return []


def _start_proxy(db: str, port: int, log) -> "subprocess.Popen":  # noqa: F821
    proc = cli_start("storage-proxy", "--storage", db, "--port", str(port), log=log)
    client = open_proxy(f"grpc://127.0.0.1:{port}", timeout=60)  # it answers once it listens
    client.close()
    return proc


@pytest.mark.slow
def test_two_workers_through_the_proxy_ride_its_sigkill_and_restart_with_every_cell_once(tmp_path):
    with fresh_database(postgres_url()) as db:
        port = free_port()
        grpc_url = f"grpc://127.0.0.1:{port}"
        proxy = _start_proxy(db, port, tmp_path / "proxy1.log")
        log = tmp_path / "run.log"
        run = cli_start("run", STUDY_FILE, "--workers", "2", "--seeds", "4", "--storage", grpc_url, "--tracking-uri",
                        f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu", "--no-progress", log=log,
                        ACON_SLEEP_SECONDS="0.2", **HEARTBEAT)
        again = None
        try:
            wait_for(lambda: sum(t.state.name == "COMPLETE" for t in _trials(db)) >= 2 or run.poll() is not None,
                     120, "two trials done through the proxy")
            assert run.poll() is None, log.read_text()[-3000:]
            proxy.send_signal(signal.SIGKILL)
            proxy.wait(timeout=10)
            before = sum(t.state.name == "COMPLETE" for t in _trials(db))
            time.sleep(2)  # the workers' calls fail meanwhile: UNAVAILABLE, retried
            again = _start_proxy(db, port, tmp_path / "proxy2.log")  # the same port: the workers' URL still holds
            code = run.wait(timeout=180)
            # the restarted proxy serves what the database holds (its cache began empty: no stale trial state)
            seen = optuna.load_study(study_name="sleep-quick", storage=ProxyStorage(host="127.0.0.1", port=port)).trials
        finally:
            for proc in (run, proxy, again):
                if proc is not None and proc.poll() is None:
                    proc.kill()
        err = log.read_text()
        trials = _trials(db)
        unfinished = [(t.number, t.state.name, t.user_attrs.get(attrs.FAIL_REASON)) for t in trials
                      if t.state.name != "COMPLETE"]
        assert code == 0, (unfinished, err[-3000:])
        assert before < 8, "the study finished before the proxy was killed: it proves nothing"
        assert "storage unreachable since" in err and "UNAVAILABLE" in err and "storage reachable again" in err, err
        complete = [t.user_attrs[attrs.CELL_KEY] for t in trials if t.state.name == "COMPLETE"]
        assert len(complete) == len(set(complete)) == 8  # every cell once: none duplicated, none lost
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        failed = [(t.number, t.user_attrs.get(attrs.FAIL_REASON)) for t in trials
                  if t.state.name == "FAIL" and not attrs.is_spurious(t)]
        assert not failed, (failed, err[-3000:])
        assert [(t.number, t.state) for t in seen] == [(t.number, t.state) for t in trials]
        assert all(isinstance(t.system_attrs.get(attrs.HEARTBEAT), float) for t in trials if t.state.name == "COMPLETE")


def test_an_unreachable_proxy_url_fails_in_one_line_that_says_what_was_tried(tmp_path):
    port = free_port()  # nothing listens there
    result = cli("run", STUDY_FILE, "--workers", "2", "--storage", f"grpc://127.0.0.1:{port}", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu", "--no-progress", ACON_PROXY_WAIT="2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0] == (f"error: no Optuna storage proxy answers at grpc://127.0.0.1:{port} (tried for 2 s); start one there with `run_study.py storage-proxy "
                        f"--storage DATABASE_URL --host 127.0.0.1 --port {port}`")


@pytest.mark.parametrize("url", ["grpc://127.0.0.1", "grpc://:13000", "grpc://host:port", "grpc://h:1/db"])
def test_a_malformed_proxy_url_is_refused_with_the_form_it_takes(url):
    with pytest.raises(UserError, match=r"a storage proxy URL is grpc://HOST:PORT .*got"):
        open_storage(url)


def test_a_proxy_url_is_a_store_for_several_writers_as_given():
    url = "grpc://10.0.0.5:13000"
    assert resolve_storage(url, study="s", workers=32) == url
    check_workers(32, url)  # not refused, as SQLite would be


def test_a_dead_proxy_answers_unavailable_and_that_is_an_outage_to_ride():
    client = ProxyStorage(host="127.0.0.1", port=free_port())  # no wait: the call itself meets nobody
    with pytest.raises(Exception) as err:
        client.get_all_studies()
    client.close()
    assert is_transient(err.value) and describe_failure(err.value).startswith("UNAVAILABLE: ")


@pytest.fixture
def served(tmp_path):
    """An in-process proxy over a SQLite file (the server does not care which RDB), and its URL."""
    from studies.store.proxy import make_server

    port = free_port()
    server = make_server(open_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat=False, ride_outages=False),
                         "127.0.0.1", port, threads=2)
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(grace=0).wait()


def test_a_trial_whose_heartbeat_through_the_proxy_went_stale_is_failed_with_its_reason(served, monkeypatch):
    monkeypatch.setenv("ACON_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ACON_HEARTBEAT_GRACE", "3")
    study = optuna.create_study(study_name="beats", storage=open_storage(served))
    alive, silent, never = study.ask(), study.ask(), study.ask()
    storage = study._storage
    for trial in (alive, silent):
        storage.record_heartbeat(trial._trial_id)
    storage.set_trial_system_attr(silent._trial_id, attrs.HEARTBEAT, time.time() - 10)  # beat last 10 s ago
    assert fail_stale_trials(study, "judge:1") == [silent.number]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "RUNNING"]  # one that never beat is no one's stale
    assert trials[silent.number].user_attrs[attrs.FAIL_REASON].startswith(
        f"{attrs.STALE}: no heartbeat from its worker for over the 3 s grace")


def test_a_second_proxy_on_a_port_in_use_is_refused(served):
    from studies.store.proxy import make_server
    from studies.store.storage import StorageError

    port = int(served.rsplit(":", 1)[1])
    with pytest.raises(StorageError, match=f"storage-proxy cannot listen on 127.0.0.1:{port}"):
        make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)


def test_a_database_restart_behind_the_proxy_answers_unavailable_and_the_worker_rides_it(capsys):
    """The database goes away behind a live proxy (a TCP proxy in front of PostgreSQL drops every connection and
    refuses new ones for 2 s): the proxy answers UNAVAILABLE, not UNKNOWN, and the worker's call waits it out."""
    from sqlalchemy.engine import make_url

    from studies.store.proxy import make_server
    from _services import TcpProxy

    with fresh_database(postgres_url()) as db:
        target = make_url(db)
        tcp = TcpProxy(target.host, target.port)
        port = free_port()
        server = make_server(open_storage(tcp.url(db), heartbeat=False, ride_outages=False), "127.0.0.1", port, 2)
        server.start()
        try:
            study = optuna.create_study(study_name="behind", storage=open_storage(f"grpc://127.0.0.1:{port}"))
            study.enqueue_trial({})
            tcp.cut()
            threading.Timer(2.0, tcp.restore).start()
            trial = study.ask()  # reaches the database through the proxy only once it is back
        finally:
            server.stop(grace=0).wait()
            tcp.cut()
    err = capsys.readouterr().err
    assert trial.number == 0 and "storage unreachable since" in err and "storage reachable again" in err, err
    assert "UNAVAILABLE: database unreachable: " in err, err


#: A proxy over a SQLite file in a process of its own (``storage-proxy`` serves database servers only).
_SERVE = """
import sys
from studies.store.proxy import make_server
from studies.store.storage import open_storage
server = make_server(open_storage(sys.argv[1], heartbeat=False, ride_outages=False), sys.argv[2], int(sys.argv[3]), 2)
server.start()
server.wait_for_termination()
"""


def test_a_call_through_a_silently_cut_network_fails_unavailable_instead_of_hanging(tmp_path):
    """The proxy on a test host of our own; the link is cut without a reset (``Partition``): Optuna's calls have no
    deadline, so without keepalive the call would wait out TCP's retransmissions (15 min). With it, the unanswered
    ping fails the call UNAVAILABLE, an outage the worker rides, and the channel is back once the link is."""
    import subprocess
    import sys

    from _services import Partition, cli_env

    why = Partition.available()
    if why:
        pytest.skip(why)
    partition = Partition()
    port = free_port()
    server = subprocess.Popen([*partition.prefix(), sys.executable, "-c", _SERVE, f"sqlite:///{tmp_path}/optuna.db",
                               partition.peer_ip, str(port)], env=cli_env(), stderr=open(tmp_path / "proxy.log", "w"))
    client = None
    try:
        client = open_proxy(f"grpc://{partition.peer_ip}:{port}", timeout=60, keepalive=1.0)
        client.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "silent")
        partition.cut()
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                client.get_all_studies()
                outcome.append(None)
            except Exception as exc:  # noqa: BLE001 - the test reads it
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=30)  # keepalive 1 s: a ping unanswered for 1 s fails it in about 2 s
        assert outcome, "the call still waits on a silent network 30 s later: no keepalive"
        assert outcome[0] is not None and is_transient(outcome[0]), outcome
        assert describe_failure(outcome[0]).startswith("UNAVAILABLE: "), describe_failure(outcome[0])
        partition.heal()
        assert [s.study_name for s in wait_for(lambda: _answer(client.get_all_studies), 30, "the healed link")] == [
            "silent"]
    finally:
        if client is not None:
            client.close()
        server.kill()
        server.wait()
        partition.close()


def _answer(call):
    """``call()``, or None while it fails transiently."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001
        if not is_transient(exc):
            raise
        return None
