"""The outage wrapper's rules, each on a real Optuna RDB storage (SQLite) whose connection is made to fail.

A database server going away is tested for real in ``test_outage.py``; here the faults are injected
at the one place they happen, so each rule is checked exactly: a lost reply, a limit, a cache read.
"""
from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy.exc
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import TrialState

from studies.errors import UserError
from studies.store import outage
from studies.store.outage import ResilientStorage, StorageDown, StorageUnavailable, is_transient, outage_limit

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _refused() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


class Flaky(optuna.storages.RDBStorage):
    """A real SQLite RDB storage; ``fail[name] = n`` makes the next n calls of ``name`` fail as an outage
    would, before (``lost=False``) or after (``lost=True``: the write is committed, the reply lost) doing them."""

    def __init__(self, url: str):
        super().__init__(url)
        self.fail: dict[str, int] = {}
        self.lost = False
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, name: str, call):
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            if self.lost:
                call()
            raise _refused()
        return call()

    def set_trial_state_values(self, trial_id, state, values=None):
        return self._maybe_fail("set_trial_state_values",
                                lambda: super(Flaky, self).set_trial_state_values(trial_id, state, values))

    def set_trial_user_attr(self, trial_id, key, value):
        return self._maybe_fail("set_trial_user_attr",
                                lambda: super(Flaky, self).set_trial_user_attr(trial_id, key, value))


@pytest.fixture
def store(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(outage, "BACKOFF_FIRST", 0.01)
    flaky = Flaky(f"sqlite:///{tmp_path}/o.db")
    wrapped = ResilientStorage(_CachedStorage(flaky), limit=5, name="db")
    study = optuna.create_study(storage=wrapped, study_name="s")
    return flaky, wrapped, study


def test_a_result_whose_reply_was_lost_is_not_told_twice_and_the_outage_is_two_lines(store, capsys):
    flaky, wrapped, study = store
    trial = study.ask()
    flaky.fail["set_trial_state_values"], flaky.lost = 1, True  # committed, then the reply lost
    study.tell(trial, 0.5)  # Optuna's own retry of the lost write would raise UpdateFinishedTrialError
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5)]
    assert flaky.calls["set_trial_state_values"] == 1  # not written again: the check before the retry saw it applied
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("storage unreachable since ") and "up to 5 s" in err[0]
    assert "connection refused" in err[0] and err[1].startswith("storage reachable again at ")


def test_a_result_for_a_trial_finished_elsewhere_meanwhile_is_refused_not_overwritten(store):
    flaky, wrapped, study = store
    trial = study.ask()
    flaky.fail["set_trial_state_values"], flaky.lost = 1, False
    original = flaky.set_trial_state_values

    def failed_by_another_worker(trial_id, state, values=None):  # the outage: another worker fails the trial
        if flaky.fail.get("set_trial_state_values"):
            optuna.storages.RDBStorage.set_trial_state_values(flaky, trial_id, TrialState.FAIL)
        return original(trial_id, state, values)

    flaky.set_trial_state_values = failed_by_another_worker
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="already FAIL"):
        wrapped.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    assert study.trials[0].state == TrialState.FAIL


def test_writes_that_are_upserts_are_retried_and_a_claim_whose_reply_was_lost_is_not_taken(store):
    flaky, wrapped, study = store
    trial = study.ask()
    flaky.fail["set_trial_user_attr"], flaky.lost = 3, True
    trial.set_user_attr("k", "v")
    assert study.trials[0].user_attrs == {"k": "v"} and flaky.calls["set_trial_user_attr"] == 4

    study.enqueue_trial({})
    waiting = study.trials[1]._trial_id
    flaky.fail["set_trial_state_values"] = 1  # the claim was applied, its reply lost: whose is it? not ours
    assert wrapped.set_trial_state_values(waiting, TrialState.RUNNING) is False
    assert study.trials[1].state == TrialState.RUNNING and "worker" not in study.trials[1].user_attrs


def test_past_the_limit_one_error_and_inside_deferring_no_wait(store, monkeypatch):
    flaky, wrapped, study = store
    trial = study.ask()
    wrapped._outage.limit = 0.3
    flaky.fail["set_trial_user_attr"], flaky.lost = 10 ** 6, False
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"unreachable since .*longer than the 0 s limit.*rerun the same"):
        trial.set_user_attr("k", "v")
    assert isinstance(StorageUnavailable("x"), UserError)  # the CLI prints it in one line, exit code 2
    with wrapped.deferring():
        began = time.monotonic()
        with pytest.raises(StorageDown):
            trial.set_user_attr("k", "v")
        assert time.monotonic() - began < 0.2  # no backoff: the caller holds it back and goes on
    assert time.monotonic() - started < 5


def test_stale_trials_are_not_judged_by_a_process_that_was_just_cut_off_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(outage, "BACKOFF_FIRST", 0.01)
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=1)
    wrapped = ResilientStorage(_CachedStorage(rdb), limit=5, name="db")
    study = optuna.create_study(storage=wrapped, study_name="h")
    trial = study.ask()
    wrapped.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # the heartbeat is older than the grace
    wrapped.get_all_trials(study._study_id)  # the judge reached the storage just now (as a worker does between trials)
    wrapped._outage.failed(_refused(), time.time())
    wrapped._outage.succeeded()  # we were cut off a moment ago
    assert wrapped._get_stale_trial_ids(study._study_id) == []
    wrapped._outage.ended -= 1 + outage.BACKOFF_MAX  # as if the outage ended grace + a backoff step ago
    assert wrapped._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_stale_trials_are_not_judged_on_a_read_that_itself_rode_an_outage(tmp_path, monkeypatch):
    """The judge was not cut off when it began to look, but its read met the outage and was answered the moment the
    storage came back: the other workers have not beaten since, and their live trials must not be failed."""
    monkeypatch.setattr(outage, "BACKOFF_FIRST", 0.01)

    class CutOnce(optuna.storages.RDBStorage):
        cut = 1

        def _get_stale_trial_ids(self, study_id):
            if self.cut:
                self.cut -= 1
                raise _refused()
            return super()._get_stale_trial_ids(study_id)

    rdb = CutOnce(f"sqlite:///{tmp_path}/r.db", heartbeat_interval=1, grace_period=1)
    wrapped = ResilientStorage(_CachedStorage(rdb), limit=5, name="db")
    study = optuna.create_study(storage=wrapped, study_name="r")
    trial = study.ask()
    wrapped.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # its heartbeat is older than the grace: stale to anyone not cut off
    wrapped.get_all_trials(study._study_id)  # the judge reached the storage just now: the first check lets it look
    assert wrapped._outage.quiet_for() > 1 + outage.BACKOFF_MAX  # and was never cut off before
    assert wrapped._get_stale_trial_ids(study._study_id) == []
    assert rdb.cut == 0  # the read did meet the outage
    wrapped._outage.ended -= 1 + outage.BACKOFF_MAX
    assert wrapped._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_stale_trials_are_not_judged_by_a_process_silent_long_enough_to_have_missed_an_outage(tmp_path):
    """The judge made no call for a while (training, MLflow): an outage wholly within that gap went unseen here, and
    may have just ended with the other worker's beat still to come. It judges after its next call instead."""
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/q.db", heartbeat_interval=1, grace_period=2)
    wrapped = ResilientStorage(_CachedStorage(rdb), limit=5, name="db")
    study = optuna.create_study(storage=wrapped, study_name="q")
    trial = study.ask()
    wrapped.record_heartbeat(trial._trial_id)
    time.sleep(3.2)  # the beat is older than the grace (SQLite's clock has whole seconds); no call from us since
    assert wrapped._outage.silent_for() > 3 and wrapped._outage.quiet_for() == float("inf")  # no outage seen
    assert wrapped._get_stale_trial_ids(study._study_id) == []
    wrapped.get_all_trials(study._study_id)  # a call that reaches the storage
    assert wrapped._outage.silent_for() < 1
    assert wrapped._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_orphans_are_running_trials_no_worker_claimed_within_twice_the_grace(tmp_path):
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/g.db", heartbeat_interval=1, grace_period=1)
    wrapped = ResilientStorage(_CachedStorage(rdb), limit=5, name="db")
    study = optuna.create_study(storage=wrapped, study_name="g")
    claimed, orphan = study.ask(), study.ask()
    claimed.set_user_attr("worker", "host:1")
    assert wrapped.orphans(study._study_id, 1) == []  # too young
    time.sleep(2.2)
    assert wrapped.orphans(study._study_id, 1) == [orphan._trial_id]
    assert study.trials[1].user_attrs["spurious"] is True


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), (" 2M ", 120)])
def test_outage_limit_takes_seconds_or_a_unit(text, seconds):
    assert outage_limit(text) == seconds


@pytest.mark.parametrize("text", ["0", "-3", "abc", "5x", "inf", "nan", ""])
def test_outage_limit_refuses_what_is_not_a_duration_naming_the_range(text, monkeypatch):
    monkeypatch.delenv(outage.OUTAGE_ENV, raising=False)
    with pytest.raises(UserError, match=r"--outage-limit takes a duration > 0"):
        outage_limit(text)


def test_the_limit_comes_from_the_environment_and_defaults_to_five_minutes(monkeypatch):
    monkeypatch.delenv(outage.OUTAGE_ENV, raising=False)
    assert outage_limit() == 300
    monkeypatch.setenv(outage.OUTAGE_ENV, "2m")
    assert outage_limit() == 120
    monkeypatch.setenv(outage.OUTAGE_ENV, "never")
    with pytest.raises(UserError, match="ACON_OUTAGE_LIMIT takes a duration"):
        outage_limit()


def test_only_connection_failures_are_outages():
    assert is_transient(optuna.exceptions.StorageInternalError("commit failed").with_traceback(None)) is False
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit")
    wrapped.__cause__ = _refused()
    assert is_transient(wrapped)
    assert not is_transient(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(sqlalchemy.exc.DataError("INSERT", {}, Exception("value too long")))


def test_the_outage_clock_starts_when_the_failed_call_began_so_a_silent_network_counts_its_timeout():
    """A call on a silent network fails only when its timeout fires: that wait is part of the outage. With a
    0.2 s limit, a call that hangs 0.3 s before failing has used the limit up: no second attempt."""
    state = outage._Outage(0.2, "db")
    attempts = []

    def hangs_then_fails():
        attempts.append(time.time())
        time.sleep(0.3)
        raise _refused()

    began = time.time()
    with pytest.raises(StorageUnavailable, match="longer than the 0 s limit"):
        state.ride(hangs_then_fails)
    assert len(attempts) == 1 and state.since == pytest.approx(began, abs=0.05)


@pytest.mark.parametrize("limit, connect, user_ms", [(300, 10, 30000), (60, 10, 20000), (8, 2, 2000), (1, 1, 2000)])
def test_each_attempt_on_a_database_server_times_out_well_inside_the_outage_limit(limit, connect, user_ms):
    from studies.store.storage import postgres_timeouts

    timeouts = postgres_timeouts(limit)
    assert (timeouts["connect_timeout"], timeouts["tcp_user_timeout"]) == (connect, user_ms)
    assert timeouts["keepalives"] == 1 and timeouts["keepalives_idle"] * 1000 <= 30000


def test_mlflow_clients_get_timeouts_sized_from_the_outage_limit_where_the_user_set_none(monkeypatch):
    from studies.tracking import writer

    uri = writer._with_timeouts("postgresql+psycopg://u:p@db:5432/mlflow?connect_timeout=3", 8)
    assert "connect_timeout=3" in uri and "tcp_user_timeout=2000" in uri and "keepalives=1" in uri  # the user's kept
    import os

    keys = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", writer._OURS)
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    writer._bound_http(60)  # backoff 2 + 4 + 8 + 16 = 30 s <= 60; the next (32 s) would pass it
    assert (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == ("4", "30")
    with writer._fast_http():  # the first check of a server still fails fast: our own limits are not the user's
        assert (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == ("0", "10")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    for key in keys:  # a user's own setting, as a worker's environment would also carry ours
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "500")
    writer._bound_http(60)
    with writer._fast_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "500"  # the user's setting wins, even for the check
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "500"
