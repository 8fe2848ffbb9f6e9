"""Collecting a study from a real MLflow SQLite store written by the real writer (``Tracker``)."""
import pytest

from _tracked import Trial, grid, write_study
from report import EmptyStudyError, MetricNotFoundError, StudyNotFoundError, build_report, collect

AXES = ["activation", "generator", "r"]
RELU = {"activation": "relu", "generator": "-", "r": "-"}
META = {"activation": "meta_acon", "generator": "channel", "r": "16"}


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    trials = grid([RELU, META], range(3), lambda c, s: 0.70 + (0.02 if c is META else 0.0) + 0.001 * s)
    trials += [
        Trial(6, {**META, "seed": 3}, state="PRUNED", curves={"val_acc": [0.3]}),
        Trial(7, {**RELU, "seed": 4}, state="FAIL", reason="loss is nan"),
        Trial(2, {**RELU, "seed": 2}, final={"val_acc": 0.99}),  # trial 2 logged twice
        Trial(8, {**META, "seed": 0}, final={"val_acc": 0.10}),  # cell+seed completed twice
    ]
    write_study(uri, "abl", trials, axes=AXES)
    write_study(uri, "empty", [], axes=AXES)
    return uri


def test_collect_counts_states_and_duplicates_once(uri):
    runs = collect("abl", tracking_uri=uri)
    assert len(runs.trials) == 10 and len(runs.kept) == 8
    assert runs.counts() == {"complete": 6, "pruned": 1, "fail": 1, "running": 0, "duplicates": 2}
    dup = runs.trials.set_index("duplicate")
    assert sorted(dup.index) == ["", "", "", "", "", "", "", "", "cell+seed", "trial_number"]
    # The earliest completed run is kept, the late repeat with its odd value is not averaged in.
    assert 0.99 not in runs.kept["final/val_acc"].tolist() and 0.10 not in runs.kept["final/val_acc"].tolist()
    assert runs.axes == AXES and runs.metric == "final/val_acc" and runs.direction == "maximize"


def test_collect_reads_axes_seed_params_and_fail_reason(uri):
    kept = collect("abl", tracking_uri=uri).kept.set_index("trial")
    assert kept.loc[1, "activation"] == "relu" and kept.loc[1, "generator"] == "-"
    assert kept.loc[4, "r"] == "16" and kept.loc[4, "seed"] == 1
    assert kept.loc[4, "final/val_acc"] == pytest.approx(0.721)
    assert kept.loc[7, "fail_reason"] == "loss is nan" and kept.loc[7, "status"] == "FAILED"
    assert kept.loc[6, "status"] == "KILLED" and kept.loc[0, "param.lr"] == "0.1"


def test_history_is_a_long_frame_of_per_epoch_values(uri):
    from report import history

    hist = history(collect("abl", tracking_uri=uri), keys=("val/acc",))
    one = hist[hist["trial"] == 3].sort_values("step")
    # trial 3 is meta_acon seed 0 (final 0.72); the synthetic curve climbs linearly over 3 epochs.
    assert one["step"].tolist() == [1, 2, 3]
    assert one["value"].tolist() == pytest.approx([0.24, 0.48, 0.72])
    assert set(hist["trial"]) == {0, 1, 2, 3, 4, 5, 6}  # kept runs with a val_acc history (not the failed one)


@pytest.mark.parametrize("call, error, text", [
    (lambda u: collect("nope", tracking_uri=u), StudyNotFoundError, "no MLflow experiment 'nope'"),
    (lambda u: collect("empty", tracking_uri=u), EmptyStudyError, "no trial runs"),
    (lambda u: build_report("abl", tracking_uri=u, metric="top9", log_to_mlflow=False), MetricNotFoundError,
     "no run logged metric 'top9'"),
    (lambda u: build_report("abl", tracking_uri=u, metric="val_acx", log_to_mlflow=False), MetricNotFoundError,
     r"no run logged metric 'val_acx' \(did you mean 'val/acc'\?\); logged metrics: "),
])
def test_bad_input_raises_one_line_lookup_or_value_error(uri, call, error, text):
    with pytest.raises(error, match=text) as info:
        call(uri)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_a_missing_sqlite_store_is_refused_and_not_created(tmp_path):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    missing.parent.mkdir()
    with pytest.raises(StudyNotFoundError, match=f"no MLflow store at {missing}; run the study first") as info:
        collect("abl", tracking_uri=f"sqlite:///{missing}")
    assert "\n" not in str(info.value)
    assert list(missing.parent.iterdir()) == []  # MLflow would have created an empty store here


def test_a_search_studys_trials_of_one_design_and_seed_are_trials_not_duplicates(tmp_path):
    """TPE gives every trial of the one design (seed 0) its own lr: three trials, not one counted once.
    The same runs from a grid study are one cell run three times. Parent runs from before the sampler tag
    are told apart by their n_trials setting, which only a search has."""
    from mlflow import MlflowClient

    cell = {"activation": "meta_acon", "generator": "channel", "r": "8", "seed": 0}
    trials = [Trial(n, cell, final={"val_acc": acc}) for n, acc in enumerate([0.2, 0.95, 0.9])]
    counts = {}
    for sampler in ("tpe", "grid"):
        uri = f"sqlite:///{tmp_path / sampler}.db"
        write_study(uri, sampler, trials, axes=["activation", "generator", "r"], sampler=sampler)
        runs = collect(sampler, tracking_uri=uri)
        counts[sampler] = (runs.search, runs.counts()["complete"], runs.counts()["duplicates"])
    assert counts == {"tpe": (True, 3, 0), "grid": (False, 1, 2)}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'tpe'}.db")
    parent = collect("tpe", tracking_uri=client.tracking_uri).parent_run_id
    client.delete_tag(parent, "acon.sampler")  # a parent run written before the tag existed
    assert collect("tpe", tracking_uri=client.tracking_uri).counts()["complete"] == 1  # read as a grid ...
    client.log_param(parent, "n_trials", "8")
    assert collect("tpe", tracking_uri=client.tracking_uri).counts()["complete"] == 3  # ... unless it searched
