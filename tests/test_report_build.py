"""build_report end to end on a real MLflow store: files in every format, plots, artifacts on the parent run."""
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from _tracked import grid, write_study
from report import build_report
from report.plots import complexity_weights, edf, importance_figure, param_importances, plot_param_importance

CELLS = [{"activation": "relu", "generator": "-", "r": "-"},
         {"activation": "meta_acon", "generator": "channel", "r": "16"},
         {"activation": "meta_acon", "generator": "layer", "r": "-"}]
GAIN = {"-": 0.0, "channel": 0.02, "layer": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # channel gains 2 + 0.1 * seed points over relu: a real, not constant, paired gain
    trials = grid(CELLS, range(4), lambda c, s: 0.7 + GAIN[c["generator"]] * (1 + 0.05 * s) + 0.003 * ((s * 7) % 3))
    for t in trials:  # meta-ACON costs 10% more FLOPs than ReLU
        t.cost = {"flops": 1.1e6 if t.cell["activation"] == "meta_acon" else 1e6, "params": 1000}
    parent = write_study(uri, "abl", trials, axes=["activation", "generator", "r"]).parent_id
    return uri, parent, root


def test_report_writes_every_format_and_logs_them_to_the_parent_run(store):
    uri, parent, root = store
    out = root / "out"
    text = build_report("abl", tracking_uri=uri, formats=("terminal", "markdown", "csv", "latex", "html"),
                        out_dir=out, plots=True)
    assert "12 complete, 0 pruned, 0 failed" in text and "+2.15" in text
    csv = pd.read_csv(out / "abl_table.csv").set_index("generator")
    # seeds 0..3 add 0.3 * (0, 1, 2, 0) points: mean 70 + 2.15 + 0.225
    assert csv.loc["channel", "mean"] == pytest.approx(72.375) and csv.loc["channel", "n"] == 4
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for folder in ("report/tables", "report/plots") for a in client.list_artifacts(parent, folder)}
    for name in ("tables/abl_table.txt", "tables/abl_table.md", "tables/abl_table.csv", "tables/abl_table.tex",
                 "tables/abl_table.html", "plots/edf_generator.png", "plots/edf_generator.svg",
                 "plots/edf_generator_by_flops.png", "plots/curves_val_acc.png"):
        assert f"report/{name}" in logged
    # activation has two values (relu, meta_acon): drawn; an axis with one value would be skipped
    assert (out / "edf_r.png").stat().st_size > 5000 and (out / "edf_activation.png").exists()
    page = (out / "abl_table.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and "<title>abl: ablation" in page
    assert "72.38 ± 0.33" in page and "standard deviation across seeds" in page and "<td>tiny_cnn</td>" in page
    assert page.count('src="data:image/png;base64,') == len(list(out.glob("*.png")))


def test_report_updates_the_parent_run_description_and_summary_metrics(store):
    uri, parent, _ = store
    build_report("abl", tracking_uri=uri, group_by="generator")
    run = MlflowClient(tracking_uri=uri).get_run(parent)
    note = run.data.tags["mlflow.note.content"]
    assert "## Results" in note and "| channel" in note and "+2.15" in note
    # the mean objective per row (a fraction, as logged) and the best row
    assert run.data.metrics["mean/channel"] == pytest.approx(0.72375)
    assert run.data.tags["acon.best_variant"] == "channel"


def test_terminal_table_fits_100_columns_with_the_baseline_first(store):
    uri, _, _ = store
    text = build_report("abl", tracking_uri=uri, log_to_mlflow=False)
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = [ln for ln in text.splitlines() if ln.startswith(("relu", "meta_acon"))]
    assert rows[0].startswith("relu") and "baseline" in rows[0] and "±" in text


@pytest.mark.parametrize("fmt, first", [("md", "study abl"), ("csv", "activation,generator,r"),
                                        ("html", "<!DOCTYPE html>")])
def test_the_first_format_is_what_build_report_returns(store, fmt, first):
    uri, _, _ = store
    assert build_report("abl", tracking_uri=uri, formats=(fmt,), log_to_mlflow=False).startswith(first)


def test_group_by_one_axis_and_another_baseline(store):
    uri, _, _ = store
    text = build_report("abl", tracking_uri=uri, group_by="generator", baseline="generator=layer", log_to_mlflow=False)
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith(("channel", "layer", "-"))}
    assert "baseline" in lines["layer"] and "+2.15" in lines["channel"] and "better" in lines["channel"]
    assert "noise" in lines["-"] or "n/a" in lines["-"]


def test_edf_and_complexity_weights():
    x, y = edf(np.array([3.0, 1.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 3.0] and y.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    # group a has 3 small models and 1 large one: normalised, each complexity bin weighs the same.
    flops = pd.Series([1e6, 1e6, 1e6, 1e9, 1e6, 1e9])
    w = complexity_weights(flops, pd.Series(list("aaaabb")), bins=2)
    assert w.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2, 1 / 2, 1 / 2])


def test_param_importance_plot_from_an_optuna_study(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) ** 2 + 0.01 * t.suggest_float("wd", 0, 1), n_trials=20)
    paths = plot_param_importance(study, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg"] and paths[0].stat().st_size > 3000
    assert list(param_importances(study)) == ["lr", "wd"]


def test_a_grid_studys_seed_is_drawn_as_noise_and_the_importance_is_the_same_on_every_run():
    """A full grid, r x gate x four seeds, where the seed moves the value most: the seed's bar is grey and
    says it is noise, and two reports of one study draw the same numbers."""
    study = optuna.create_study(direction="maximize")
    for seed in range(4):
        for r in (4, 8, 16):
            for gate in ("sigmoid", "hard_sigmoid"):
                study.enqueue_trial({"r": r, "gate": gate, "seed": seed})
    study.optimize(lambda t: 0.05 * t.suggest_categorical("r", [4, 8, 16]) / 16 + 0.3 * (t.suggest_int("seed", 0, 3) % 2)
                   + 0 * len(t.suggest_categorical("gate", ["sigmoid", "hard_sigmoid"])), n_trials=24)
    importances = param_importances(study)
    assert importances == param_importances(study) and list(importances)[0] == "seed"
    assert sum(importances.values()) == pytest.approx(1.0)
    ax = importance_figure(importances, "t").axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "seed (noise)" and set(labels[:-1]) == {"r", "gate"}  # largest on top
    colours = [tuple(bar.get_facecolor()[:3]) for bar in ax.patches]
    assert colours[-1] == (0.65, 0.65, 0.65) and colours[0] != colours[-1]


def test_each_table_explains_its_own_columns_and_an_accuracy_interval_stays_within_0_to_100(tmp_path):
    """Layer-wise meta-ACON diverging on one seed of three (99, 60, 98 %): the t-interval of its mean would reach
    about 140 %; the report clips it at 100 and says so. The terminal's legend names only the terminal's
    columns and says where the others are; the Markdown legend names every one of its columns."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    unstable = {0: 0.99, 1: 0.60, 2: 0.98}
    trials = grid(CELLS[::2], range(3), lambda c, s: unstable[s] if c["generator"] == "layer" else 0.97 + 0.001 * s)
    write_study(uri, "wild", trials, axes=["activation", "generator", "r"])
    out = tmp_path / "out"
    terminal = build_report("wild", tracking_uri=uri, formats=("terminal", "markdown", "csv"), out_dir=out,
                            log_to_mlflow=False)
    csv = pd.read_csv(out / "wild_table.csv").set_index("generator")
    assert csv.loc["layer", "ci_high"] == 100.0 and 0.0 < csv.loc["layer", "ci_low"] < csv.loc["layer", "mean"]
    assert csv.loc["-", "ci_high"] < 100.0  # the steady row is not touched
    row = next(line for line in terminal.splitlines() if line.startswith("meta_acon"))
    assert ", 100.00]" in row
    legend = terminal[terminal.index("\nn: completed trials"):]
    assert "clipped to 0-100" in legend and "p (Holm):" in legend
    assert "p (W):" not in legend and "P(better):" not in legend and "More columns" in legend
    markdown = (out / "wild_table.md").read_text(encoding="utf-8")
    header = next(line for line in markdown.splitlines() if line.startswith("| activation"))
    for column in ("p (W)", "P(better)", "detectable Δ", "err %", "pairs"):
        assert f"| {column}" in header and f"{column}:" in markdown
    assert "| Δ CI (bootstrap)" in header and "Δ CI (t) / (bootstrap):" in markdown
    assert "More columns" not in markdown


@pytest.mark.parametrize("kwargs, message", [
    ({"group_by": "generatr"}, "unknown axis to group by 'generatr' (did you mean 'generator'?); valid choices: "
                               "activation, dataset, generator, model, r, variant"),
    ({"baseline": "activation=relux"}, "unknown baseline value of activation 'relux' (did you mean 'relu'?); "
                                       "valid choices: meta_acon, relu"),
    ({"baseline": "activaton=relu"}, "unknown baseline axis 'activaton' (did you mean 'activation'?)"),
])
def test_a_misspelt_axis_or_baseline_value_is_refused_with_the_choices(store, kwargs, message):
    """A typo in a baseline value used to give a table with no comparison at all; in an axis, a list of every
    column, metrics included."""
    from report import ReportError

    uri, _, _ = store
    with pytest.raises(ReportError) as error:
        build_report("abl", tracking_uri=uri, log_to_mlflow=False, **kwargs)
    assert str(error.value).startswith(message)


def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything_is_logged(store, tmp_path):
    from report import ReportError

    uri, parent, _ = store
    before = MlflowClient(tracking_uri=uri).get_run(parent).data.tags["mlflow.note.content"]
    a_file = tmp_path / "table.txt"
    a_file.write_text("mine")
    with pytest.raises(ReportError, match=f"cannot write the report to {a_file}: it is a file, not a folder"):
        build_report("abl", tracking_uri=uri, out_dir=a_file)
    with pytest.raises(ReportError, match="cannot write the report to .*: Not a directory"):
        build_report("abl", tracking_uri=uri, out_dir=a_file / "below")
    assert a_file.read_text() == "mine"
    assert MlflowClient(tracking_uri=uri).get_run(parent).data.tags["mlflow.note.content"] == before


def test_a_search_study_leads_with_its_best_trials_and_the_settings_it_sampled(tmp_path):
    """One design, one seed, four TPE trials of different lr and epochs (one failed): the report names the best
    completed trials first, best first, with the sampled settings only (not the fixed model or dataset)."""
    from _tracked import Trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cell = {"activation": "meta_acon", "generator": "channel", "r": "8", "seed": 0}
    sampled = [(0.2, 0.0079, 2, "COMPLETE"), (0.946, 0.054851, 7, "COMPLETE"), (0.9, 0.3, 5, "COMPLETE"),
               (0.5, 0.45, 6, "FAIL")]
    trials = [Trial(n, cell, state=state, final={"val_acc": acc} if state == "COMPLETE" else {},
                    settings={"lr": lr, "epochs": epochs}) for n, (acc, lr, epochs, state) in enumerate(sampled)]
    write_study(uri, "search", trials, axes=["activation", "generator", "r"], sampler="tpe")
    out = tmp_path / "out"
    text = build_report("search", tracking_uri=uri, formats=("terminal", "markdown"), out_dir=out)
    assert "3 complete, 0 pruned, 1 failed" in text and "Best 3 of 3 completed trials of this search" in text
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("trial ")))
    assert lines[head].split() == ["trial", "acc", "%", "epochs", "lr"]
    assert [line.split() for line in lines[head + 2:head + 5]] == [["1", "94.60", "7", "0.05485"],
                                                                    ["2", "90.00", "5", "0.3"],
                                                                    ["0", "20.00", "2", "0.0079"]]
    markdown = (out / "search_table.md").read_text(encoding="utf-8")
    assert "| trial   | acc %   | epochs   | lr      |" in markdown
    note = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("search").experiment_id],
        filter_string="tags.`acon.role` = 'parent'")[0].data.tags["mlflow.note.content"]
    assert "| 1       | 94.60   | 7        | 0.05485 |" in note  # the description in the MLflow UI shows them too
