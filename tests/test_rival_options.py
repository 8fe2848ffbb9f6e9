"""The options axis: an activation's own keywords (DY-ReLU's K, FReLU's window) as a design axis, from the study
definition through the Optuna param, the MLflow param and variant label, to the modules built and the report."""
from __future__ import annotations

from types import SimpleNamespace

import mlflow
import optuna
import pandas as pd
import pytest

from acon.rivals.dy_relu import DyReLU
from acon.rivals.frelu import FReLU
from report import build_report
from report.stats import parse_baseline
from studies.design_options import canonical, parse
from studies.run.build import build_variant
from studies.run.cells import axis_choices, cell_key
from studies.run.launch import run_study
from studies.run.options import RunOptions
from studies.spec import STUDIES, Study, design_cell, variant_label
from studies.tracking import schema

TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 1, "seeds": 1, "batch_size": 64}
DATA = SimpleNamespace(num_classes=10, in_channels=1, image_size=16)
FRELU = {"activation": "frelu", "placement": "all"}


@pytest.mark.parametrize("given, text, typed", [
    ({"k": 3}, "k=3", {"k": 3}),
    ("k=3", "k=3", {"k": 3}),
    ({"kernel_size": 5, "bn": False}, "bn=False,kernel_size=5", {"bn": False, "kernel_size": 5}),
    (" kernel_size=5, bn=False ", "bn=False,kernel_size=5", {"bn": False, "kernel_size": 5}),
    ({"lambda_a": 0.5, "mode": "x", "tag": "3", "init": None}, "init=None,lambda_a=0.5,mode=x,tag='3'",
     {"init": None, "lambda_a": 0.5, "mode": "x", "tag": "3"}),
])
def test_options_have_one_canonical_string_that_parses_back_to_the_same_typed_keywords(given, text, typed):
    assert canonical(given) == text
    back = parse(text)
    assert back == typed and [type(v) for v in back.values()] == [type(typed[k]) for k in back]


def test_options_are_a_cell_axis_its_label_and_its_optuna_param():
    study = STUDIES.get("rival_options")
    cells = study.cells(study.settings("quick"))
    labels = sorted({variant_label(c) for c in cells})
    assert labels == ["dy_relu_b/r4/all/k=1", "dy_relu_b/r4/all/k=2", "dy_relu_b/r4/all/k=3",
                      "frelu/all/kernel_size=3", "frelu/all/kernel_size=5", "relu/all"]
    assert axis_choices(cells)["options"] == ["-", "k=1", "k=2", "k=3", "kernel_size=3", "kernel_size=5"]
    assert design_cell({"activation": "relu"})["options"] == "-" and design_cell({**FRELU, "options": {}})["options"] == "-"
    # a cell without options keeps the key it had before the axis existed (a study run then resumes)
    relu = {**design_cell({"activation": "relu", "placement": "all"}), "seed": 0}
    assert cell_key(relu) == "activation=relu,gate=-,generator=-,placement=all,r=-,seed=0"
    k3 = {**design_cell({"activation": "dy_relu_b", "r": 4, "options": "k=3"}), "seed": 1}
    assert schema.run_name(k3) == "dy_relu_b·r4·k=3 s1" and "options=k=3" in cell_key(k3)
    assert schema.mean_key("dy_relu_b/r4/all/k=3") == "mean/dy_relu_b.r4.all.k_3"


def test_the_built_model_has_the_cell_options():
    settings = {"model": "tiny_cnn", "small_input": True}
    k3 = {**design_cell({"activation": "dy_relu_b", "r": 4, "placement": "all", "options": {"k": 3}}), "seed": 0}
    model, sites = build_variant(k3, settings, DATA)
    dy = [m for m in model.modules() if isinstance(m, DyReLU)]
    assert sites and len(dy) == len(sites) and {(m.k, m.r) for m in dy} == {(3, 4)}
    wide = {**design_cell({**FRELU, "options": "kernel_size=5"}), "seed": 0}
    model, _ = build_variant(wide, settings, DATA)
    convs = [m.conv_frelu for m in model.modules() if isinstance(m, FReLU)]
    assert convs and {c.kernel_size for c in convs} == {(5, 5)}
    assert all(c.groups == c.in_channels == c.out_channels for c in convs)  # depthwise


@pytest.mark.parametrize("options, message", [
    ({"kernel": 5}, "design {'activation': 'frelu', 'placement': 'all', 'options': {'kernel': 5}}: activation 'frelu' "
                    "does not accept option 'kernel' (did you mean 'kernel_size'?); valid options: bn, channel_dim, "
                    "kernel_size"),
    ({"r": 4}, "option 'r' is the design axis 'r': set it as {'r': 4} in the design, not in its options"),
    ("gate=hard_sigmoid", "option 'gate' is the design axis 'gate': set it as {'gate': 'hard_sigmoid'} in the "
                          "design, not in its options"),
    ({"channel_dim": 3}, "option 'channel_dim' is set by the model build for each site, not by a design"),
])
def test_an_unknown_or_colliding_option_is_one_line_before_any_store_is_opened(tmp_path, options, message):
    study = Study(name="bad", doc="d", designs=({**FRELU, "options": options},), fixed=dict(TINY))
    with pytest.raises(ValueError) as err:
        run_study(study, _stores(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_study_over_options_logs_them_as_mlflow_and_optuna_params_and_reports_them(tmp_path):
    designs = ({**FRELU, "options": {"kernel_size": 3}}, {**FRELU, "options": "kernel_size=5"})
    result = run_study(Study(name="opt", doc="d", designs=designs, fixed=dict(TINY)), _stores(tmp_path))
    assert result.counts == {"COMPLETE": 2}
    study = optuna.load_study(study_name="opt-quick", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(t.params["options"] for t in study.trials) == ["kernel_size=3", "kernel_size=5"]
    assert study.trials[0].distributions["options"].choices == ("kernel_size=3", "kernel_size=5")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["opt"])
    children = runs[runs["tags.acon.role"] == "trial"].set_index("params.options")
    assert sorted(children.index) == ["kernel_size=3", "kernel_size=5"]
    assert children.loc["kernel_size=5", "tags.acon.variant"] == "frelu/all/kernel_size=5"
    # a 5x5 depthwise window adds 16 weights per channel over 3x3: the cost params see the option
    extra = children["params.cost.params_extra"].astype(int)
    assert extra["kernel_size=5"] > extra["kernel_size=3"] > 0
    parent = runs[runs["tags.acon.role"] == "parent"].iloc[0]
    assert parent["tags.acon.axes"].split(",")[-1] == "options"
    build_report("opt", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", baseline="options=kernel_size=3",
                 formats=("csv",), out_dir=tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "opt_table.csv")
    assert sorted(table["options"]) == ["kernel_size=3", "kernel_size=5"]
    means = mlflow.MlflowClient().get_run(parent["run_id"]).data.metrics  # MLflow keys take no "=": "_"
    assert sorted(means) == ["mean/frelu.all.kernel_size_3", "mean/frelu.all.kernel_size_5"]


def test_a_report_baseline_keeps_the_commas_of_its_options_and_reads_them_canonically():
    columns = ["activation", "r", "options"]
    assert parse_baseline("activation=frelu,options=kernel_size=5,bn=False", columns) == {
        "activation": "frelu", "options": "bn=False,kernel_size=5"}
    assert parse_baseline("options=k=3,r=4", columns) == {"options": "k=3", "r": "4"}
    with pytest.raises(ValueError, match="unknown baseline axis 'bn'"):
        parse_baseline("activation=frelu,bn=False", columns)


def _stores(tmp_path) -> RunOptions:
    return RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      progress=False, device="cpu")
