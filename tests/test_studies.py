"""End-to-end studies against real SQLite stores: run, read back, resume, interrupt."""
from __future__ import annotations

import mlflow
import optuna
import pytest
import torch
from torch import nn

from acon import ACTIVATIONS
from studies.runner import RunOptions, run_study
from studies.spec import Study

TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 2, "seeds": 2, "batch_size": 64}


def tiny_study(name: str = "tiny", designs=None, **kw) -> Study:
    designs = designs or ({"activation": "relu", "placement": "all"},
                          {"activation": "meta_acon", "generator": "channel", "r": 4, "placement": "all"})
    return Study(name=name, doc="a tiny test study", designs=tuple(designs), fixed=dict(TINY), **kw)


def stores(tmp_path) -> RunOptions:
    return RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      progress=False, device="cpu")


def child_runs(tmp_path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[experiment])
    return runs[runs["tags.acon.role"] == "trial"], runs[runs["tags.acon.role"] == "parent"]


def test_grid_study_runs_every_cell_once_and_mirrors_it_in_mlflow(tmp_path):
    result = run_study(tiny_study(), stores(tmp_path))
    assert result.counts == {"COMPLETE": 4}
    study = optuna.load_study(study_name="tiny-quick", storage=f"sqlite:///{tmp_path}/optuna.db")
    cells = sorted((t.user_attrs["activation"], t.user_attrs["seed"]) for t in study.trials)
    assert cells == [("meta_acon", 0), ("meta_acon", 1), ("relu", 0), ("relu", 1)]
    children, parents = child_runs(tmp_path, "tiny")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert sorted(children["tags.optuna.trial_number"].astype(int)) == [0, 1, 2, 3]
    # design axes and settings as params, metrics per epoch and final, overhead vs ReLU
    meta = children[children["params.activation"] == "meta_acon"].iloc[0]
    assert meta["params.generator"] == "channel" and meta["params.r"] == "4" and meta["params.epochs"] == "2"
    assert meta["metrics.params_extra"] > 0 and meta["metrics.sites"] >= 1
    relu = children[children["params.activation"] == "relu"].iloc[0]
    assert relu["params.generator"] == "-" and relu["metrics.params_extra"] == 0
    history = mlflow.MlflowClient().get_metric_history(meta["run_id"], "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert meta["metrics.final_val_acc"] == pytest.approx(history[-1].value)
    trial_values = {t.user_attrs["mlflow_run_id"]: t.value for t in study.trials}
    assert trial_values[meta["run_id"]] == pytest.approx(meta["metrics.final_val_acc"])


def test_rerun_of_a_finished_study_runs_nothing_and_more_seeds_run_only_new_cells(tmp_path):
    run_study(tiny_study(), stores(tmp_path))
    again = run_study(tiny_study(), stores(tmp_path))
    assert again.ran == 0 and again.counts == {"COMPLETE": 4}
    more = stores(tmp_path)
    more.overrides = {"seeds": 3}
    grown = run_study(tiny_study(), more)
    assert grown.ran == 2 and grown.counts == {"COMPLETE": 6}
    children, parents = child_runs(tmp_path, "tiny")
    assert len(children) == 6 and len(parents) == 1


def test_resume_with_different_results_settings_is_refused(tmp_path):
    run_study(tiny_study(designs=[{"activation": "relu", "placement": "all"}]), stores(tmp_path))
    changed = stores(tmp_path)
    changed.overrides = {"epochs": 3}
    with pytest.raises(ValueError, match=r"epochs=2 \(now 3\)"):
        run_study(tiny_study(designs=[{"activation": "relu", "placement": "all"}]), changed)


class _Crash(nn.Module):
    """An activation that raises on its first forward after ``armed`` is set."""

    armed: BaseException | None = None

    def forward(self, x):
        if _Crash.armed is not None:
            exc, _Crash.armed = _Crash.armed, None
            raise exc
        return torch.relu(x)


@pytest.fixture
def crash_activation():
    with ACTIVATIONS.temporary("test_crash", lambda channels, **_: _Crash()):
        yield _Crash
    _Crash.armed = None


def test_interrupted_trial_is_failed_and_killed_and_a_rerun_completes_without_duplicates(tmp_path, crash_activation):
    study = tiny_study(designs=[{"activation": "test_crash", "placement": "all"}])
    crash_activation.armed = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run_study(study, stores(tmp_path))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    states = [t.state.name for t in optuna.load_study(study_name="tiny-quick", storage=storage).trials]
    assert states == ["FAIL", "WAITING"]
    children, parents = child_runs(tmp_path, "tiny")
    assert list(children["status"]) == ["KILLED"] and list(parents["status"]) == ["KILLED"]
    assert "interrupted" in children.iloc[0]["tags.acon.fail_reason"]

    result = run_study(study, stores(tmp_path))
    assert result.counts == {"COMPLETE": 2, "FAIL": 1}
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["seed"] for t in done) == [0, 1]
    children, parents = child_runs(tmp_path, "tiny")
    assert sorted(children["status"]) == ["FINISHED", "FINISHED", "KILLED"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"


def test_a_crashing_trial_is_recorded_failed_with_its_reason_and_the_study_goes_on(tmp_path, crash_activation):
    crash_activation.armed = RuntimeError("boom in forward")
    result = run_study(tiny_study(designs=[{"activation": "test_crash", "placement": "all"}]), stores(tmp_path))
    assert result.counts == {"FAIL": 1, "COMPLETE": 1}
    failed = [t for t in result.study.trials if t.state.name == "FAIL"][0]
    assert "boom in forward" in failed.user_attrs["fail_reason"]
    children, _ = child_runs(tmp_path, "tiny")
    row = children[children["status"] == "FAILED"].iloc[0]
    assert row["tags.acon.state"] == "FAIL" and "boom in forward" in row["tags.acon.fail_reason"]
    rerun = run_study(tiny_study(designs=[{"activation": "test_crash", "placement": "all"}]), stores(tmp_path))
    assert rerun.ran == 1 and rerun.counts == {"FAIL": 1, "COMPLETE": 2}


def test_hpo_study_samples_the_search_space_and_prunes(tmp_path):
    def space(trial):
        return {"lr": trial.suggest_float("lr", 1e-3, 0.3, log=True)}

    study = Study(name="tinyhpo", doc="tiny hpo", designs=({"activation": "relu", "placement": "all"},),
                  sampler="tpe", pruner="median", search_space=space,
                  fixed={**TINY, "seeds": 1, "n_trials": 5, "epochs": 3})
    result = run_study(study, stores(tmp_path))
    finished = [t for t in result.study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    assert all(1e-3 <= t.params["lr"] <= 0.3 for t in finished)
    assert {t.user_attrs["variant"] for t in finished} == {"relu/all"}
    children, _ = child_runs(tmp_path, "tinyhpo")
    assert len(children) == 5
    assert set(children["params.lr"]) == {str(t.params["lr"]) for t in finished}
    pruned = children[children["tags.acon.state"] == "PRUNED"]
    assert (pruned["status"] == "KILLED").all()
