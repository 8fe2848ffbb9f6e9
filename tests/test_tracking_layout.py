"""What a real ``run`` leaves in MLflow and Optuna, read back through their own clients.

One tiny real study (2 designs x 2 seeds, tiny_cnn on 240 digits, 1 epoch) is run once for
the module; the tests read what a person would see in the MLflow UI and optuna-dashboard.
"""
from __future__ import annotations

import re

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.distributions import CategoricalDistribution, IntDistribution

from _services import cli, write_study
from report import build_report
from studies.tracking import schema
from studies.run.options import RunOptions
from studies.run.launch import run_study
from studies.spec import Study
from studies.tracking.writer import Tracker

TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 1, "seeds": 2, "batch_size": 64}
DESIGNS = ({"activation": "relu", "placement": "all"},
           {"activation": "meta_acon", "generator": "channel", "r": 4, "placement": "all"})


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    options = RunOptions(storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db",
                         progress=False, device="cpu")
    study = Study(name="layout", doc="Does channel-wise meta-ACON beat ReLU?", designs=DESIGNS, fixed=dict(TINY))
    result = run_study(study, options)
    client = MlflowClient(tracking_uri=options.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("layout").experiment_id])
    parent = next(r for r in runs if r.data.tags[schema.ROLE] == schema.PARENT)
    children = [r for r in runs if r.data.tags[schema.ROLE] == schema.TRIAL]
    return result, client, parent, children, options, root


def test_child_runs_are_named_by_variant_and_seed(real):
    _, _, _, children, _, _ = real
    assert sorted(r.info.run_name for r in children) == ["meta_acon·channel·r4 s0", "meta_acon·channel·r4 s1",
                                                         "relu s0", "relu s1"]


def test_child_metrics_come_in_sections_and_costs_are_rounded_params(real):
    _, client, _, children, _, _ = real
    meta = next(r for r in children if r.data.params["activation"] == "meta_acon")
    keys = set(meta.data.metrics)
    assert {"train/loss", "train/lr", "val/acc", "val/loss", "final/val_acc", "final/best_val_acc"} <= keys
    assert not keys & {"params", "flops", "macs", "sites", "val_acc", "final_val_acc"}  # no constants as series
    assert [m.step for m in client.get_metric_history(meta.info.run_id, "val/acc")] == [1]
    loss = meta.data.metrics["train/loss"]
    assert loss > 0 and len(repr(loss).replace("0.", "", 1).lstrip("0").replace(".", "")) <= 6  # 0.312542, not 17 digits
    params = meta.data.params
    assert int(params["cost.params_extra"]) > 0 and int(params["cost.sites"]) >= 1
    assert len(params["cost.flops_extra_pct"].split(".")[1]) == 2  # 6.63, not 6.63349783...
    assert meta.data.tags[schema.METRIC] == "final/val_acc" and params["seed"] in ("0", "1")
    dataset = meta.inputs.dataset_inputs[0]
    assert dataset.dataset.name == "digits" and '"train"' in dataset.dataset.profile


def test_parent_run_has_a_description_settings_and_a_mean_per_variant(real):
    result, client, parent, children, _, _ = real
    note = parent.data.tags[schema.NOTE]
    assert note.startswith("**Does channel-wise meta-ACON beat ReLU?**") and "| model | tiny_cnn |" in note
    assert "## Results" in note and "meta_acon/channel/r4/all" in note
    assert parent.data.params["epochs"] == "1" and parent.data.params["dataset"] == "digits"
    assert parent.data.tags[schema.METRIC] == "final/val_acc"
    relu = [t.value for t in result.study.trials if t.params["activation"] == "relu"]
    assert parent.data.metrics["mean/relu.all"] == pytest.approx(sum(relu) / 2, abs=1e-6)
    assert parent.data.tags[schema.BEST] in ("relu/all", "meta_acon/channel/r4/all")


def test_optuna_trials_carry_the_design_axes_as_params_with_fixed_distributions(real):
    result, _, _, _, _, _ = real
    study = result.study
    assert study.metric_names == ["val_acc"]
    for t in study.trials:
        assert set(t.params) == {"activation", "generator", "r", "seed"}  # placement: one value, no param
        assert t.distributions["activation"] == CategoricalDistribution(["meta_acon", "relu"])
        assert t.distributions["r"] == CategoricalDistribution(["-", 4])
        assert isinstance(t.distributions["seed"], IntDistribution)
        assert len(str(t.user_attrs)) < 250  # readable in `optuna trials`: no settings JSON
    cells = sorted((t.params["activation"], t.params["seed"]) for t in study.trials)
    assert cells == [("meta_acon", 0), ("meta_acon", 1), ("relu", 0), ("relu", 1)]
    assert set(optuna.importance.get_param_importances(study)) == {"activation", "generator", "r", "seed"}


def test_report_on_the_real_study_logs_a_utf8_page_to_the_parent_run(real, tmp_path):
    _, client, parent, _, options, _ = real
    build_report("layout", tracking_uri=options.tracking_uri, plots=True)
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, schema.TABLES_DIR)}
    assert tables == {f"{schema.TABLES_DIR}/layout_table.{x}" for x in ("txt", "html", "csv")}
    page = client.download_artifacts(parent.info.run_id, f"{schema.TABLES_DIR}/layout_table.html", str(tmp_path))
    text = open(page, encoding="utf-8").read()
    assert '<meta charset="utf-8">' in text and "±" in text and "data:image/png;base64," in text
    plots = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(parent.info.run_id, schema.PLOTS_DIR)}
    assert "edf_activation.png" in plots and "edf_placement.png" not in plots  # one placement: no plot
    after = client.get_run(parent.info.run_id).data
    assert "| relu" in after.tags[schema.NOTE] and "standard deviation across seeds" in after.tags[schema.NOTE]
    assert "## Settings" in after.tags[schema.NOTE]  # the report replaced the results only
    # the report's mean per row lands on the same keys the run wrote, not on a second set
    assert set(after.metrics) == {"mean/relu.all", "mean/meta_acon.channel.r4.all"}


def test_a_partial_run_lists_what_is_left_exits_0_and_says_how_to_browse(tmp_path):
    study_file = write_study(tmp_path, "partial", epochs=1, seeds=1)
    proc = cli("run", study_file, "--max-trials", "1", "--no-progress", "--storage", f"sqlite:///{tmp_path}/o.db",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert proc.returncode == 0, proc.stderr
    assert "1 cell(s) not run yet: acon_c/all s0" in proc.stdout and "nan" not in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/m.db" in proc.stdout
    assert re.search(r"#/experiments/1/runs/\w+\?workflowType=machine_learning\b", proc.stdout), proc.stdout
    rep = cli("report", "partial", "--format", "csv", "--no-log", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert rep.returncode == 0 and rep.stdout.startswith("activation,generator,r,placement,"), rep.stderr


def test_two_workers_logging_the_same_dataset_at_once_both_get_it(tmp_path):
    """MLflow looks a dataset up, then inserts it. Another worker (its own engine on the same SQLite
    file) inserts the same dataset in between: the real store raises, and the trial must not fail."""
    import sqlalchemy
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def tracker(uri):
        return Tracker(uri, "race", study="race", optuna_study="race-quick", preset="quick",
                       axes=("activation",), metric="val_acc", direction="maximize")

    ours, theirs = tracker(f"sqlite:///{tmp_path}/mlflow.db"), tracker(f"sqlite:///{tmp_path}/./mlflow.db")
    our_run = ours.client.create_run(ours.experiment_id).info.run_id
    their_run = theirs.client.create_run(theirs.experiment_id).info.run_id
    engine = SqlAlchemyStore._engine_map[ours.uri]
    raced = []

    def other_worker_first(conn, cursor, statement, *_):
        if statement.startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)
            theirs.log_dataset(their_run, "digits", {"train": 8}, {"classes": 10})

    sqlalchemy.event.listen(engine, "before_cursor_execute", other_worker_first)
    try:
        ours.log_dataset(our_run, "digits", {"train": 8}, {"classes": 10})
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", other_worker_first)
    assert raced  # the other worker really got in between our lookup and our insert
    inputs = [ours.client.get_run(r).inputs.dataset_inputs for r in (our_run, their_run)]
    assert [[(d.dataset.name, d.dataset.digest) for d in i] for i in inputs] == [[("digits", inputs[1][0].dataset.digest)]] * 2


def test_a_dataset_write_that_fails_for_another_reason_is_not_retried(tmp_path):
    """Only a unique-key clash between workers is retried; logging to a deleted run fails at once, with
    MLflow's own message."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "gone", study="gone", optuna_study="gone-quick",
                      preset="quick", axes=("activation",), metric="val_acc", direction="maximize")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.delete_run(run_id)
    calls = []
    log_inputs = tracker.client.log_inputs
    tracker.client.log_inputs = lambda *a, **k: (calls.append(a), log_inputs(*a, **k))
    with pytest.raises(MlflowException, match="active"):
        tracker.log_dataset(run_id, "digits", {"train": 8}, {"classes": 10})
    assert len(calls) == 1


def _sites_of(client, run, tmp_path, folder=schema.ACTIVATIONS_DIR):
    import pandas as pd

    return pd.read_csv(client.download_artifacts(run.info.run_id, f"{folder}/{schema.SITES_FILE}", str(tmp_path)))


def test_every_trial_records_what_its_sites_learned_as_a_table_and_act_metrics(real, tmp_path):
    _, client, _, children, _, _ = real
    for run in children:
        sites = _sites_of(client, run, tmp_path / run.info.run_id)
        assert list(sites["site"]) == list(range(4))  # tiny_cnn: three conv blocks and the head, in depth order
        assert (sites["x_std"] > 0).all() and list(sites["stage"]) == [1, 2, 3, 3]
        if run.data.params["activation"] == "meta_acon":
            assert len(sites) == int(run.data.params["cost.sites"]) and set(sites["generator"]) == {"channel"}
            assert sites["beta_mean"].between(0, 1).all() and sites["linear_fraction"].between(0, 1).all()
            history = client.get_metric_history(run.info.run_id, "act/linear_fraction")
            assert [m.step for m in history] == [1]  # the one epoch, beside val/acc
            assert history[0].value == pytest.approx(sites["linear_fraction"].mean(), abs=1e-5)
        else:  # the baseline's rows line up by site, with its inputs' statistics only
            assert sites["beta_mean"].isna().all() and set(sites["activation"]) == {"relu"}
            assert not any(k.startswith(schema.ACT) for k in run.data.metrics)


def test_report_activations_shows_each_acon_design_by_stage_and_draws_the_plots(real, tmp_path):
    _, client, parent, _, options, _ = real
    text = build_report("layout", tracking_uri=options.tracking_uri, activations=True, plots=True, out_dir=tmp_path,
                        log_to_mlflow=False)
    section = text.split("activation sites learned")[1]
    row = next(line for line in section.splitlines() if line.startswith("meta_acon·channel·r4"))
    assert "relu" not in section.split("\n\n")[0]  # no ACON site, no row: its input statistics are in the CSV
    assert len(row.split()) == 10  # design, n, β, spread, linear, linear of seeds 0 and 1, stages 1..3 (β/linear)
    assert {"act_beta_by_depth.png", "act_beta_spread_by_depth.png", "act_curves.png"} <= {p.name for p in tmp_path.iterdir()}
    import pandas as pd

    every = pd.read_csv(tmp_path / "layout_sites.csv")
    assert len(every) == 4 * 4 and set(every["seed"]) == {0, 1}  # 4 trials x 4 sites


def test_a_trial_saves_its_weights_and_epoch_tables_when_asked(tmp_path):
    import torch

    from ablation import build_model

    options = RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         progress=False, device="cpu")
    fixed = {**TINY, "seeds": 1, "epochs": 2, "save_model": True, "act_every": 1, "act_images": 16}
    run_study(Study(name="saved", doc="weights", designs=DESIGNS[1:], fixed=fixed), options)
    client = MlflowClient(tracking_uri=options.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("saved").experiment_id],
                             f"tags.`{schema.ROLE}` = '{schema.TRIAL}'")[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "act/beta_mean")] == [1, 2]
    early = _sites_of(client, run, tmp_path / "e1", schema.activations_dir(1))
    final = _sites_of(client, run, tmp_path / "e2")
    assert len(early) == len(final) == 4 and not early["beta_mean"].equals(final["beta_mean"])  # it trained between
    state = torch.load(client.download_artifacts(run.info.run_id, schema.MODEL_FILE, str(tmp_path)))
    model, _ = build_model("tiny_cnn", activation="meta_acon", generator="channel", r=4, num_classes=10,
                           in_channels=1, input_size=8)
    model.load_state_dict(state)  # strict: the saved trial rebuilds from its cell
    from studies.training.held_out import measure_held_out
    from studies.run.build import load_data

    data = load_data("digits", None, False, 240)
    again = measure_held_out(model, data, images=16, batch_size=1024).sites
    assert again["beta_mean"].to_numpy() == pytest.approx(final["beta_mean"].to_numpy(), rel=1e-4)
