"""Every failure explained where the user looks, and none that costs a finished result.

The studies here train nothing: their own loop (``train=``) returns known values, so each verdict is the
same on every CPU. The stores are real (SQLite for Optuna, an MLflow SQLite store shared by the module).
"""
from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from studies.errors import UserError
from studies import Study
from studies.run.options import RunOptions
from studies.run.launch import run_study
from studies.tracking import schema
from studies.tracking.summary import summary_text
from studies.store import attrs

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")

DESIGNS = ({"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"})
FIXED = {"model": "tiny_cnn", "dataset": "digits", "limit": 60, "epochs": 2, "seeds": 2, "act_images": 0}
RAN: list[tuple[str, int]] = []  # cells a loop was called for, in order


def known(model, data, settings, tracker):
    """No training: a known value per design and seed at each epoch."""
    RAN.append((tracker.cell["activation"], tracker.cell["seed"]))
    value = 0.5 + 0.1 * tracker.cell["seed"]
    for epoch in range(1, settings["epochs"] + 1):
        tracker.log_epoch(epoch, val_acc=value)
    return {"val_acc": value}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow store for the module's studies (each its own experiment): creating one costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('failures')}/mlflow.db"


@pytest.fixture(autouse=True)
def fresh_log():
    RAN.clear()


def _options(tmp_path, tracking: str) -> RunOptions:
    return RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=tracking, progress=False, device="cpu")


def _study(name: str, train, **fixed) -> Study:
    return Study(name=name, doc="known values", designs=DESIGNS, fixed={**FIXED, **fixed}, train=train)


def test_a_user_error_in_the_studys_loop_stops_the_run_at_its_first_cell_and_a_rerun_after_the_fix_resumes(
        tmp_path, tracking):
    def broken(model, data, settings, tracker):
        RAN.append((tracker.cell["activation"], tracker.cell["seed"]))
        if tracker.cell["activation"] == "acon_c":
            tracker.log_epoch(0, val_acc=0.5)  # epochs count from 1: the loop's mistake, the same in every cell
        return known(model, data, settings, tracker)

    options = _options(tmp_path, tracking)
    with pytest.raises(UserError) as err:
        run_study(_study("user_error", broken), options)
    message = str(err.value)
    assert "epoch must be an integer >= 1, got 0" in message and "fix it, then rerun the same command" in message
    assert "\n" not in message  # the CLI prints it as one line
    # relu s0, relu s1 ran; the first acon_c cell stopped the run: the second was never started
    assert [a for a, _ in dict.fromkeys(RAN)] == ["relu", "relu", "acon_c"] and len(set(RAN)) == 3
    study = optuna.load_study(study_name="user_error-quick", storage=options.storage)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs[attrs.USER_ERROR] is True
    assert failed[0].user_attrs[attrs.FAIL_REASON].startswith("UserError: tracker.log_epoch: epoch must be")
    run = MlflowClient(tracking).get_run(failed[0].user_attrs[attrs.RUN_ID])
    assert run.info.status == "FAILED" and "epoch must be an integer" in run.data.tags[schema.FAIL_REASON]

    RAN.clear()
    result = run_study(_study("user_error", known), options)  # fixed: the rerun resumes
    assert result.missing == 0 and result.counts == {"COMPLETE": 4, "FAIL": 1}
    assert sorted(RAN) == [("acon_c", 0), ("acon_c", 1)]  # the relu cells were kept, not run again


def test_the_summary_prints_each_distinct_failure_reason_with_its_cells_and_what_to_do(tmp_path, tracking):
    def flaky(model, data, settings, tracker):
        if tracker.cell["activation"] == "acon_c":
            raise RuntimeError("CUDA out of memory")  # the same reason on both seeds: one line for both
        if tracker.cell["seed"] == 1:
            raise OSError("disk full\nmore detail on the next lines")
        return known(model, data, settings, tracker)

    result = run_study(_study("reasons", flaky), _options(tmp_path, tracking))
    assert result.counts == {"COMPLETE": 1, "FAIL": 3}
    lines = [line for line in summary_text(result).splitlines() if "cell(s) failed" in line]
    assert lines == [
        "1 cell(s) failed: OSError: disk full (relu/all s1); rerun the same command to retry them",
        "2 cell(s) failed: RuntimeError: CUDA out of memory (acon_c/all s0, acon_c/all s1); rerun the same command "
        "to retry them",
    ]


def test_a_user_error_left_from_an_earlier_run_says_fix_it_not_retry(tmp_path, tracking):
    def bad_metric(model, data, settings, tracker):
        tracker.log_epoch(1, val_acc=None)
        return {"val_acc": 0.5}

    options = _options(tmp_path, tracking)
    with pytest.raises(UserError, match=r"tracker.log_epoch: val_acc=None is not a number"):
        run_study(_study("none_metric", bad_metric), options)
    study = optuna.load_study(study_name="none_metric-quick", storage=options.storage)
    from studies.tracking.summary import failure_lines

    assert failure_lines(study) == [
        "1 cell(s) failed: UserError: tracker.log_epoch: val_acc=None is not a number; log a metric only at the "
        "epochs it has a value (relu/all s0); fix it, then rerun the same command: the study resumes"]


@pytest.mark.parametrize("value", [None, "0.9", True, [0.9]])
def test_log_epoch_refuses_a_value_that_is_not_a_number_naming_the_metric(value):
    from studies.run.custom_loop import TrialTracker

    reported = []
    tracker = TrialTracker(lambda epoch, values: reported.append(values), seed=0, device="cpu", cell={}, epochs=2)
    with pytest.raises(UserError, match=r"^tracker.log_epoch: val_loss=.* is not a number"):
        tracker.log_epoch(1, val_acc=0.5, val_loss=value)
    assert reported == [] and tracker.logged == 0  # nothing half-reported
    import numpy as np
    import torch

    tracker.log_epoch(1, val_acc=np.float32(0.5), val_loss=torch.tensor(0.25))
    assert reported == [{"val_acc": 0.5, "val_loss": 0.25}] and tracker.logged == 1


def test_an_error_in_the_site_statistics_warns_on_the_run_and_the_trial_completes(tmp_path, tracking, monkeypatch,
                                                                                   capsys):
    from studies.training import held_out as activations

    def broken(*args, **kwargs):
        raise RuntimeError("a hook that cannot cope\nsecond line")

    monkeypatch.setattr(activations, "measure_held_out", broken)
    study = Study(name="stats_broken", doc="known values", designs=DESIGNS[:1],
                  fixed={**FIXED, "seeds": 1, "act_images": 16}, train=known)
    result = run_study(study, _options(tmp_path, tracking))
    assert result.counts == {"COMPLETE": 1}
    trial = result.study.trials[0]
    assert trial.value == pytest.approx(0.5)
    run = MlflowClient(tracking).get_run(trial.user_attrs[attrs.RUN_ID])
    warning = "site statistics not measured at epoch 2: RuntimeError: a hook that cannot cope"
    assert run.info.status == "FINISHED" and run.data.tags[schema.WARNING] == warning
    assert f"**Warning:** {warning}" in run.data.tags[schema.NOTE]
    assert run.data.metrics["final/val_acc"] == pytest.approx(0.5)
    assert f"relu/all: {warning}; the trial goes on" in capsys.readouterr().err


def test_a_trial_failed_elsewhere_while_it_trains_stops_at_its_next_report_and_records_a_late_result(
        tmp_path, tracking, capsys):
    """Another process failed the trial as stale (its worker was cut off) while it kept training: its next epoch
    report meets a finished trial. It stops there, and both the Optuna trial and the MLflow run say why."""
    options = _options(tmp_path, tracking)

    def taken_over(model, data, settings, tracker):
        RAN.append((tracker.cell["activation"], tracker.cell["seed"]))
        tracker.log_epoch(1, val_acc=0.7)
        if len(RAN) == 1:  # the first trial: another process fails it now, as the heartbeat check would
            other = optuna.load_study(study_name="taken-quick", storage=options.storage)
            trial = next(t for t in other.trials if t.state.name == "RUNNING")
            other._storage.set_trial_user_attr(trial._trial_id, attrs.FAIL_REASON,
                                               f"{attrs.STALE}: no heartbeat from host:1 for over the 30 s grace")
            other._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        tracker.log_epoch(2, val_acc=0.8)
        RAN.append("epoch 2 logged")
        return {"val_acc": 0.8}

    study = Study(name="taken", doc="known values", designs=DESIGNS[:1], fixed={**FIXED, "seeds": 1},
                  train=taken_over)
    result = run_study(study, options)
    assert RAN == [("relu", 0)]  # stopped at the report of epoch 2: nothing after it ran
    first = result.study.trials[0]
    assert first.state.name == "FAIL" and first.user_attrs[attrs.FAIL_REASON].startswith(attrs.STALE)
    run = MlflowClient(tracking).get_run(first.user_attrs[attrs.RUN_ID])
    assert run.info.status == "FAILED" and run.data.tags[schema.LATE_RESULT] == "val_acc=0.8 at epoch 2"
    reason = run.data.tags[schema.FAIL_REASON]
    assert reason.startswith("late result: val_acc=0.8 at epoch 2 arrived after this trial was failed (its worker "
                             "stopped sending heartbeats: no heartbeat from host:1") and "training stopped there" in reason
    assert "**Not counted.**" in run.data.tags[schema.NOTE]
    assert "Traceback" not in reason and "UpdateFinishedTrialError" not in reason
    assert "trial #0: late result: val_acc=0.8 at epoch 2" in capsys.readouterr().err
    rerun = run_study(study, options)  # the cell runs again, once
    assert rerun.missing == 0 and rerun.counts == {"FAIL": 1, "COMPLETE": 1}


def test_a_trial_failed_between_its_claim_and_its_first_write_is_stepped_over(tmp_path, tracking, monkeypatch,
                                                                                capsys):
    """ask() hands this worker a trial that another process fails as stale before the worker marks it: the
    worker says so and goes on (it used to exit 1 on UpdateFinishedTrialError)."""
    options = _options(tmp_path, tracking)
    real_ask = optuna.Study.ask
    asked = []

    def ask_then_fail(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        asked.append(trial.number)
        if len(asked) == 1:
            self._storage.set_trial_user_attr(trial._trial_id, attrs.FAIL_REASON, "failed by a test")
            self._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_fail)
    result = run_study(_study("claimed", known), options)
    assert result.counts == {"FAIL": 1, "COMPLETE": 3} and result.missing == 1
    assert "trial #0: failed by another process as it was claimed here (failed by a test); stepping over it" \
        in capsys.readouterr().err
    monkeypatch.setattr(optuna.Study, "ask", real_ask)
    assert run_study(_study("claimed", known), options).missing == 0


def test_a_trial_failed_after_its_claim_but_before_its_design_is_read_is_stepped_over(tmp_path, tracking,
                                                                                       monkeypatch, capsys):
    from studies.run import trial as trial_module

    options = _options(tmp_path, tracking)
    real_design = trial_module._design
    calls = []

    def fail_first(ctx, trial):
        calls.append(trial.number)
        if len(calls) == 1:
            ctx.study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return real_design(ctx, trial)

    monkeypatch.setattr(trial_module, "_design", fail_first)
    result = run_study(_study("designed", known), options)
    assert result.counts == {"FAIL": 1, "COMPLETE": 3}
    assert "trial #0: failed by another process before it started" in capsys.readouterr().err


def test_a_stale_trial_is_failed_with_who_failed_it_when_and_why_and_its_run_says_so(tmp_path, tracking,
                                                                                      monkeypatch):
    import time

    from studies.store.storage import fail_stale_trials, open_storage
    from studies.tracking.writer import Tracker

    monkeypatch.setenv("ACON_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ACON_HEARTBEAT_GRACE", "2")
    storage = open_storage(f"sqlite:///{tmp_path}/stale.db")
    study = optuna.create_study(storage=storage, study_name="stale")
    tracker = Tracker(tracking, "stale", study="stale", optuna_study="stale", preset="quick", axes=("activation",),
                      metric="val_acc", direction="maximize", sampler="grid")
    tracker.open_parent(None, "sqlite://")
    run_id = tracker.start_trial(0, {"activation": "relu", "seed": 0}, {}, "relu")
    seen = []
    storage.heartbeat_stale_trial_callback = lambda st, t: (seen.append(t), tracker.fail_if_running(
        run_id, t.user_attrs[attrs.FAIL_REASON]))
    trial = study.ask()
    trial.set_user_attr("worker", "host:1")
    storage.record_heartbeat(trial._trial_id)
    assert fail_stale_trials(study, "judge:2") == []  # alive
    time.sleep(3.5)  # SQLite's clock has whole seconds: past the 2 s grace for sure
    study.get_trials()  # the judge reached the storage just now (a worker does, between two trials)
    assert fail_stale_trials(study, "judge:2") == [0]
    reason = study.trials[0].user_attrs[attrs.FAIL_REASON]
    assert study.trials[0].state.name == "FAIL"
    assert reason.startswith(f"{attrs.STALE}: no heartbeat from host:1 for over the 2 s grace") and "judge:2" in reason
    assert [t.user_attrs[attrs.FAIL_REASON] for t in seen] == [reason]  # the callback sees the reason
    run = MlflowClient(tracking).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[schema.FAIL_REASON] == reason
    assert run.data.tags[schema.NOTE].startswith("**Failed by another worker.** Its worker stopped sending heartbeats")


_UNTRACEABLE = '''
import torch.nn.functional as F
from torch import nn


class Untraceable(nn.Module):
    """A block fx cannot enter (it branches on a shape): one activation module called twice, one function."""

    def __init__(self, c):
        super().__init__()
        self.conv, self.shared = nn.Conv2d(c, c, 1), nn.SiLU()

    def forward(self, x):
        x = self.conv(x)
        if x.shape[-1] > 1:
            x = x + 1
        return F.gelu(self.shared(self.shared(x)))


def net(*, num_classes=10, in_channels=1, small_input=False):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), Untraceable(8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))
'''


def test_activation_calls_left_unreplaced_are_said_on_the_trials_run(tmp_path, tracking, monkeypatch):
    """A study compares designs on a model where the surgery could not reach every activation call: the trial's
    MLflow run says how many and where (the build said so in one line)."""
    (tmp_path / "lab_models.py").write_text(_UNTRACEABLE)
    monkeypatch.chdir(tmp_path)
    study = Study(name="unreplaced", doc="known values", designs=DESIGNS[1:],
                  fixed={**FIXED, "seeds": 1, "model": "lab_models.py:net"}, train=known)
    with pytest.warns(UserWarning, match="3 activation call"):
        result = run_study(study, _options(tmp_path, tracking))
    run = MlflowClient(tracking).get_run(result.study.trials[0].user_attrs[attrs.RUN_ID])
    assert run.info.status == "FINISHED" and run.data.tags[schema.UNREPLACED] == "3"
    assert run.data.tags[schema.WARNING] == ("3 activation call(s) left unreplaced (inside blocks torch.fx cannot "
                                             "enter): 2.shared silu module x2, 2 gelu function")
    assert "**Warning:** 3 activation call(s) left unreplaced" in run.data.tags[schema.NOTE]
