"""End-to-end studies against real SQLite stores: run, read back, resume, interrupt."""
from __future__ import annotations

import mlflow
import optuna
import pytest
import torch
from torch import nn

from acon import ACTIVATIONS
from studies.run.options import RunOptions
from studies.run.launch import run_study
from studies.spec import Study
from studies.store import attrs

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
    from studies.tracking.summary import summary_text

    assert "best trial" not in summary_text(result)  # a grid's params are its cells, nothing was sampled
    _, parent = child_runs(tmp_path, "tiny")
    assert "metrics.best/val_acc" not in parent and "tags.acon.best_trial" not in parent
    study = optuna.load_study(study_name="tiny-quick", storage=f"sqlite:///{tmp_path}/optuna.db")
    cells = sorted((t.params["activation"], t.params["seed"]) for t in study.trials)
    assert cells == [("meta_acon", 0), ("meta_acon", 1), ("relu", 0), ("relu", 1)]
    children, parents = child_runs(tmp_path, "tiny")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert sorted(children["tags.optuna.trial_number"].astype(int)) == [0, 1, 2, 3]
    # design axes and settings as params, metrics per epoch and final, overhead vs ReLU
    meta = children[children["params.activation"] == "meta_acon"].iloc[0]
    assert meta["params.generator"] == "channel" and meta["params.r"] == "4" and meta["params.epochs"] == "2"
    assert int(meta["params.cost.params_extra"]) > 0 and int(meta["params.cost.sites"]) >= 1
    relu = children[children["params.activation"] == "relu"].iloc[0]
    assert relu["params.generator"] == "-" and relu["params.cost.params_extra"] == "0"
    history = mlflow.MlflowClient().get_metric_history(meta["run_id"], "val/acc")
    assert [m.step for m in history] == [1, 2]
    # an epoch's metrics keep 6 significant digits in MLflow; the objective's final value is logged exact
    assert meta["metrics.final/val_acc"] == pytest.approx(history[-1].value, rel=1e-5)
    trial_values = {t.user_attrs["mlflow_run_id"]: t.value for t in study.trials}
    assert trial_values[meta["run_id"]] == meta["metrics.final/val_acc"]


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


def test_a_design_on_a_new_axis_resumes_but_a_new_value_on_a_varying_axis_is_refused_up_front(tmp_path):
    from studies.errors import UserError

    relu, acon_c = {"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"}
    run_study(tiny_study(designs=[relu]), stores(tmp_path))
    grown = run_study(tiny_study(designs=[relu, acon_c]), stores(tmp_path))  # activation starts to vary: fine
    assert grown.ran == 2 and grown.counts == {"COMPLETE": 4}
    before = [(t.number, t.state.name) for t in grown.study.trials]
    silu = {"activation": "silu", "placement": "all"}
    with pytest.raises(UserError, match=r"activation in \['acon_c', 'relu'\] \(now \['acon_c', 'relu', 'silu'\]\)"):
        run_study(tiny_study(designs=[relu, acon_c, silu]), stores(tmp_path))
    study = optuna.load_study(study_name="tiny-quick", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [(t.number, t.state.name) for t in study.trials] == before  # nothing queued, nothing failed
    children, parents = child_runs(tmp_path, "tiny")
    assert len(children) == 4 and list(parents["status"]) == ["FINISHED"]


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
    assert sorted(t.user_attrs[attrs.SEED] for t in done) == [0, 1]
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
    assert {t.user_attrs[attrs.VARIANT] for t in finished} == {"relu/all"}
    from studies.tracking.summary import summary_text

    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value)
    assert f"best trial #{best.number}: val_acc {best.value * 100:.2f} % with lr={best.params['lr']:.4g}" \
        in summary_text(result)
    children, parent = child_runs(tmp_path, "tinyhpo")
    assert len(children) == 5 and parent["tags.acon.sampler"].tolist() == ["tpe"]
    # the parent run's metrics: the best trial's objective and number, beside the per-variant mean
    assert parent["metrics.best/val_acc"].tolist() == [pytest.approx(best.value, rel=1e-5)]
    assert parent["tags.acon.best_trial"].tolist() == [str(best.number)]
    # one design and seed, five trials: each child run's name says which trial it is
    assert sorted(children["tags.mlflow.runName"]) == sorted(f"relu s0 #{t.number}" for t in result.study.trials)
    assert set(children["params.lr"]) == {str(t.params["lr"]) for t in finished}
    pruned = children[children["tags.acon.state"] == "PRUNED"]
    assert (pruned["status"] == "KILLED").all()


# -- the settings declaration ---------------------------------------------------------------------

def test_settings_defaults_are_the_documented_base_and_the_declaration_derives_the_key_sets():
    from studies.settings import Settings

    s = Settings()
    assert {k: s[k] for k in ("model", "dataset", "seeds", "epochs", "batch_size", "lr", "weight_decay", "n_trials")} \
        == {"model": "tiny_cnn", "dataset": "mnist5k", "seeds": 3, "epochs": 5, "batch_size": 64, "lr": 0.1,
            "weight_decay": 5e-4, "n_trials": None}
    # the resume check keeps every key it had before the declaration (seeds and the trial budget only add work)
    before = {"model", "dataset", "small_input", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
              "warmup_epochs", "label_smoothing", "augment", "limit"}
    assert before <= set(s.results()) and not {"seeds", "n_trials", "eval_batch_size"} & set(s.results())
    assert set(s.logged()) == set(s) - {"eval_batch_size"}
    assert dict(s.replace(epochs=7))["epochs"] == 7 and s.get("nope") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"fixed": {"epoch": 3}}, r"unknown setting 'epoch' in the fixed settings of study 'tiny'; valid settings: act_every, act_images, amp, "),
    ({"presets": {"paper": {"lrate": 1}}}, r"unknown setting 'lrate' in preset 'paper' of study 'tiny'"),
    ({"presets": {"paper": {"designs": ()}}}, r"'designs' in preset 'paper' .*Preset\(designs=\.\.\.\)"),
    ({"fixed": {"seeds": 0}}, r"seeds must be an integer in 1\.\.1000, got 0"),
    ({"fixed": {"optimizer": "adam"}}, r"unknown optimizer 'adam'; valid choices: adamw, sgd"),
    ({"presets": {"default": {"warmup_epochs": 9.0}}}, r"warmup_epochs must be in \[0.0, 5.0\), got 9.0"),
    ({"fixed": {"augment": "yes"}}, r"augment must be True or False, got 'yes'"),
])
def test_a_study_with_an_unknown_or_bad_setting_is_refused_when_defined(kwargs, message):
    from studies.errors import UserError

    with pytest.raises(UserError, match=message):
        Study(name="tiny", doc="d", designs=({"activation": "relu", "placement": "all"},), **kwargs)


def test_overrides_are_checked_against_the_declaration_and_none_means_unset():
    from studies.errors import UserError

    study = tiny_study()
    assert study.settings("quick", {"epochs": None, "lr": 0.5})["epochs"] == 2
    with pytest.raises(UserError, match=r"unknown setting 'designs', 'epoch' in the overrides"):
        study.settings("quick", {"epoch": 3, "designs": ()})
    with pytest.raises(ValueError, match=r"unknown preset 'huge' for study 'tiny'; valid choices: default, paper, quick"):
        study.settings("huge")


def test_a_typed_preset_changes_settings_and_design_cells_of_that_preset_only():
    from studies.settings import Preset

    other = ({"activation": "silu", "placement": "all"},)
    study = tiny_study(presets={"paper": Preset({"epochs": 3}, designs=other), "default": {"seeds": 1}})
    paper = study.for_preset("paper")
    assert paper.designs == other and study.for_preset("quick").designs == study.designs
    assert [c["activation"] for c in paper.cells(study.settings("paper"))] == ["silu", "silu"]
    assert study.settings("paper").epochs == 3 and len(study.cells(study.settings("default"))) == 2


def test_a_study_recorded_before_a_setting_was_declared_resumes_when_it_keeps_its_default(tmp_path):
    from studies.run.launch import _check_same_settings
    from studies.settings import Settings

    recorded = {k: v for k, v in Settings().results().items() if k not in ("momentum", "amp")}
    _check_same_settings("old", recorded, Settings().results())
    with pytest.raises(ValueError, match=r"momentum=0\.9 \(now 0\.5\)"):
        _check_same_settings("old", recorded, Settings(momentum=0.5).results())


def test_the_builtin_paper_presets_carry_their_own_design_cells():
    from studies.catalog import load_study

    ratio = load_study("reduction_ratio")
    assert [d.get("r") for d in ratio.for_preset("paper").designs] == [None, 2, 4, 8, 16, 32, 64]
    assert [d.get("r") for d in ratio.for_preset("quick").designs] == [None, 2, 4, 8, 16]
    placement = load_study("placement")
    assert placement.settings("paper").model == "resnet50"
    assert {d["placement"] for d in placement.for_preset("paper").designs} >= {"bottleneck_3x3", "first:4"}
