"""Models and build_model: golden counts, the paper's parameter figures, training, compile, state_dict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import ablation
from ablation import golden
from acon import MetaAconC

GOLDEN = Path(__file__).parent / "golden"


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def records():
    """Golden records rebuilt from the code (resnet50 is built twice here and nowhere else)."""
    return {name: golden.record(spec) for name, spec in golden.SPECS.items()}


@pytest.mark.parametrize("name", sorted(golden.SPECS))
def test_golden_files_match(records, name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert records[name] == expected, "regenerate with `python -m ablation.golden` if the change is intended"


def test_paper_parameter_figures(records):
    r50 = records["resnet50_bottleneck_3x3_r16"]
    assert round(r50["params_baseline"] / 1e6, 1) == 25.6 and round(r50["params"] / 1e6, 1) == 25.7
    assert len(r50["sites"]) == 16  # paper table: 25.5M (truncated) -> 25.7M
    shuffle = records["shufflenet_v2_x0_5_all_r8"]
    assert round(shuffle["params_baseline"] / 1e6, 1) == 1.4 and round(shuffle["params"] / 1e6, 1) == 1.7
    assert len(shuffle["sites"]) == 37


def test_resnet50_sites_are_the_bn2_relus_at_bottleneck_widths(records):
    sites = records["resnet50_bottleneck_3x3_r16"]["sites"]
    widths = [row[2] for row in sites]
    assert widths == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert all(row[1].endswith(".relu#2") and row[5].endswith(".relu_2") for row in sites)


def test_cifar_resnets_have_he_et_al_parameter_counts():
    counts = {n: _params(ablation.create_model(n)) for n in ("resnet20", "resnet32", "resnet56")}
    assert counts == {"resnet20": 269722, "resnet32": 464154, "resnet56": 853018}  # 0.27M, 0.46M, 0.85M


def test_meta_acon_model_trains_one_step_and_round_trips_state_dict():
    spec = dict(in_channels=1, r=4)
    model, sites = ablation.build_model("tiny_cnn", **spec)
    assert [type(model.get_submodule(s.target)) for s in sites] == [MetaAconC] * 4
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.get_submodule(sites[0].target).parameters())
    assert model.get_submodule(sites[3].target).p1.grad.abs().sum() > 0  # the 2D head site
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    fresh, _ = ablation.build_model("tiny_cnn", **spec)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert list(fresh.state_dict()) == list(model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_state_dict_keys_are_deterministic_for_shared_relu_sites():
    a, _ = ablation.build_model("resnet20", r=4)
    b, _ = ablation.build_model("resnet20", r=4)
    assert list(a.state_dict()) == list(b.state_dict())
    assert "layer1.0.relu_2.fc1.weight" in a.state_dict() and "relu.p1" in a.state_dict()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(b.eval()(x), a.eval()(x))


def test_compiled_model_matches_eager():
    model, _ = ablation.build_model("tiny_cnn", in_channels=1, r=4)
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    compiled = torch.compile(model, backend="aot_eager")  # no C++ codegen: fast on CPU, same graph capture
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    out = torch.compile(model.train(), backend="aot_eager")(x)
    out.sum().backward()
    assert next(model.parameters()).grad is not None


def test_baseline_is_the_untouched_model():
    model, sites = ablation.build_model("resnet20", activation="relu", placement="none")
    assert sites == [] and type(model).__name__ == "CifarResNet"
    relu_model, relu_sites = ablation.build_model("resnet20", activation="relu")
    assert len(relu_sites) == 19 and _params(relu_model) == _params(model)


def test_other_activations_by_name():
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, activation="acon_c")
    assert _params(model) - 25818 == 3 * (16 + 32 + 64 + 32)
    model, _ = ablation.build_model("tiny_cnn", in_channels=1, generator="pixel", r=1000)  # r unused by pixel
    assert _params(model) - 25818 == 2 * (16 + 32 + 64 + 32)


def test_input_channels_and_small_input_stem():
    model, sites = ablation.build_model("resnet18", in_channels=1, small_input=True, num_classes=7, placement="stage:0", r=4)
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert sites[0].spatial == (32, 32)  # default input_size 32, no stride, no max-pool
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="small_input=True is not supported for 'vgg11'; supported: densenet\\*"):
        ablation.create_model("vgg11", small_input=True)


def test_shufflenet_small_input_spatial_sizes():
    with torch.device("meta"):
        model = ablation.create_model("shufflenet_v2_x0_5", small_input=True)
    sites = ablation.list_sites(model, (1, 3, 32, 32))
    assert sites[0].spatial == (32, 32) and sites[-1].spatial == (4, 4)


def test_unknown_model_lists_valid_choices():
    with pytest.raises(KeyError, match="unknown model 'resnet5'.*valid choices: alexnet, convnext_base"):
        ablation.build_model("resnet5")
    assert {"resnet20", "resnet32", "resnet56", "tiny_cnn", "resnet50", "vit_b_16"} <= set(ablation.list_models())


def test_tiny_cnn_size_and_default_input():
    model = ablation.create_model("tiny_cnn", in_channels=1)
    assert 10_000 <= _params(model) <= 50_000
    assert ablation.default_input_size("tiny_cnn") == 8 and ablation.default_input_size("resnet50") == 224
    assert ablation.default_input_size("resnet50", small_input=True) == 32
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
