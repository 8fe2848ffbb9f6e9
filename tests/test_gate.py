"""The gate axis: ``gate="hard_sigmoid"`` is a design-axis value in studies, reaches every ACON
module a variant builds, and is counted in the analytic overhead."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import ablation
from acon.modules import AconC, MetaAcon, MetaAconC
from studies.spec import NOT_APPLICABLE, design_cell, variant_label
from studies.run.build import build_variant

DATA = SimpleNamespace(num_classes=10, in_channels=1, image_size=16)
SETTINGS = {"model": "tiny_cnn", "small_input": True}


def test_gate_is_a_design_axis_of_meta_acon_and_the_activations_that_take_a_gate():
    cell = design_cell({"activation": "meta_acon", "generator": "channel", "r": 4, "gate": "hard_sigmoid"})
    assert cell["gate"] == "hard_sigmoid"
    assert variant_label(cell) == "meta_acon/channel/r4/hard_sigmoid"
    assert design_cell({"activation": "relu", "gate": "hard_sigmoid"})["gate"] == NOT_APPLICABLE
    assert design_cell({"activation": "frelu", "gate": "hard_sigmoid"})["gate"] == NOT_APPLICABLE
    assert design_cell({"activation": "dy_relu_b", "gate": "hard_sigmoid"})["gate"] == "hard_sigmoid"  # DynamicHead's
    assert design_cell({"activation": "acon_c"})["gate"] == NOT_APPLICABLE  # the default: the paper's sigmoid
    with pytest.raises(ValueError, match="unknown gate 'hard'; valid choices: hard_sigmoid, sigmoid"):
        design_cell({"activation": "acon_c", "gate": "hard"})


@pytest.mark.parametrize("design", [
    {"activation": "meta_acon", "generator": "channel", "r": 4},
    {"activation": "meta_acon", "generator": "layer"},
    {"activation": "meta_acon", "generator": "learned"},
    {"activation": "acon_c"},
])
@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_build_variant_gives_every_acon_site_the_cell_gate(design, gate):
    cell = {**design_cell({**design, "gate": gate, "placement": "all"}), "seed": 0}
    model, sites = build_variant(cell, SETTINGS, DATA)
    acts = [m for m in model.modules() if isinstance(m, (AconC, MetaAcon, MetaAconC))]
    assert sites and len(acts) == len(sites)
    assert {m.gate for m in acts} == {gate}


def test_analytic_cost_of_the_hard_sigmoid_gate_is_a_mul_and_an_add_instead_of_a_sigmoid():
    shape = (2, 16, 5, 5)
    n = math.prod(shape)
    soft = ablation.generator_complexity("channel", 16, shape, r=4)
    hard = ablation.generator_complexity("channel", 16, shape, r=4, gate="hard_sigmoid")
    diff = {k: hard["elementwise"][k] - soft["elementwise"][k] for k in soft["elementwise"]}
    assert diff == {"sigmoid": -n, "mul": n, "add": n, "mean": 0}
    assert hard["params"] == soft["params"] and hard["macs"] == soft["macs"]
    # the generator's own sigmoid (one per sample and channel) stays
    assert hard["elementwise"]["sigmoid"] == 2 * 16


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_counted_formula_has_the_gate_it_runs(gate):
    from ablation import complexity

    shape = (6, 3, 3)  # count() takes one image
    n = 6 * 3 * 3
    counted = complexity.count(AconC(6, gate=gate), shape).elementwise  # runs the reference formula
    kind = "other" if gate == "hard_sigmoid" else "sigmoid"  # FlopCounter-style kinds: hardsigmoid is "other"
    assert {k: v for k, v in counted.items() if v} == {kind: n, "mul": 4 * n, "add": n + 6}


def test_the_gate_tells_apart_run_names_and_variant_labels():
    from studies.tracking import schema
    from studies.spec import design_cell, variant_label

    soft, hard = (dict(design_cell({"activation": "acon_c", "placement": "all", "gate": g}), seed=1)
                  for g in ("sigmoid", "hard_sigmoid"))
    assert (schema.run_name(soft), schema.run_name(hard)) == ("acon_c·sigmoid s1", "acon_c·hard_sigmoid s1")
    assert (variant_label(soft), variant_label(hard)) == ("acon_c/all/sigmoid", "acon_c/all/hard_sigmoid")
    plain = dict(design_cell({"activation": "meta_acon", "generator": "channel", "r": 8, "placement": "last_stage"}), seed=0)
    assert (schema.run_name(plain), variant_label(plain)) == ("meta_acon·channel·r8·last_stage s0",
                                                             "meta_acon/channel/r8/last_stage")
