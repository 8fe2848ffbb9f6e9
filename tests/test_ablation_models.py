"""Models and build_model: every registered model with the defaults, snapshots, training, compile, state_dict."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import _snapshots
import ablation
from ablation.build import _activation_factory
from ablation.sites import SITE_KINDS
from acon import MetaAconC

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def records():
    """Snapshot records rebuilt from the code (resnet50 is built twice here and nowhere else)."""
    return {name: _snapshots.record(spec) for name, spec in _snapshots.SPECS.items()}


@pytest.mark.parametrize("name", sorted(_snapshots.SPECS))
def test_snapshots_match(records, name):
    expected = json.loads((SNAPSHOTS / f"{name}.json").read_text())
    assert records[name] == expected, f"if the change is intended, regenerate with `{_snapshots.REGENERATE}`"


# ---- every model, every design (timm-style, parametrized over the registries) -----------------

#: ACON-A/B/C and meta-ACON with each registered beta generator.
DESIGNS = [("acon_a", None), ("acon_b", None), ("acon_c", None)] + [("meta_acon", g) for g in ablation.list_generators()]

#: Forward+backward in CI: the smallest model of each torchvision family (fewest parameters; ViT
#: and MaxViT, which take only 224x224, by toy-size instances of the same torchvision classes
#: below), the CIFAR ResNet and tiny_cnn. The rest run with ACON_TEST_ALL_MODELS=1.
SAMPLE = [
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
    "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "resnet20", "tiny_cnn",
]
#: The smallest input side each model takes (default 32): shape checks, pools and patch sizes.
SMALLEST = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "tiny_cnn": 8, **{m: 224 for m in ablation.list_models() if m.startswith("vit_")}}
ALL_MODELS = os.environ.get("ACON_TEST_ALL_MODELS") == "1"


def tiny_vit(**_):
    """torchvision's VisionTransformer at toy size (GELU sites on (N, L, C) tokens)."""
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=10)


def tiny_maxvit(**_):
    """torchvision's MaxVit at toy size (SiLU/GELU sites, channels first and last, squeeze-excite)."""
    return torchvision.models.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                                     block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=10)


@pytest.mark.parametrize("name", ablation.list_models())
def test_every_model_builds_with_the_defaults_for_every_design(name):
    """build_model(name, num_classes=10) on the meta device (tracing and shape propagation, no
    arithmetic), then every design's activation for every (width, axis) of its sites."""
    with torch.device("meta"):
        model, sites = ablation.build_model(name, num_classes=10)
        assert sites and {s.replaced for s in sites} <= set(SITE_KINDS)
        for site in sites:
            module = model.get_submodule(site.target)
            assert type(module) is MetaAconC and (module.channels, module.channel_dim) == (site.width, site.channel_dim)
        shapes = list({(s.width, s.channel_dim): s for s in sites}.values())
        for activation, generator in DESIGNS:
            make = _activation_factory(activation, generator or "channel", 16, {})
            assert [make(s).channels for s in shapes] == [s.width for s in shapes], (activation, generator)


def _forward_backward(name, activation="meta_acon", generator="channel", *, finite_grads=False):
    """A training-mode forward and backward at the smallest input, batch 2; returns (sites, model).

    Every new activation must be on the gradient path. Finite gradients are asserted only where
    asked: a deep random-init net whose BatchNorms see 2 values per channel (1x1 maps at the
    smallest input) can overflow its gradients whatever the activation.
    """
    size = SMALLEST.get(name, 32) if isinstance(name, str) else 32
    model, sites = ablation.build_model(name, activation=activation, generator=generator, num_classes=10, input_size=size)
    out = model(torch.randn(2, 3, size, size))
    out.pow(2).mean().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    for site in sites:
        grads = [p.grad for p in model.get_submodule(site.target).parameters()]
        assert grads and all(g is not None for g in grads), site.path
        assert not finite_grads or all(torch.isfinite(g).all() for g in grads), site.path
    return sites, model


@pytest.mark.parametrize("name", SAMPLE + [tiny_vit, tiny_maxvit], ids=lambda n: getattr(n, "__name__", n))
def test_sampled_models_run_forward_and_backward(name, single_thread):
    _forward_backward(name)


@pytest.mark.slow
@pytest.mark.skipif(not ALL_MODELS, reason="the big models' forward+backward: set ACON_TEST_ALL_MODELS=1 (minutes on a CPU)")
@pytest.mark.parametrize("name", [m for m in ablation.list_models() if m not in SAMPLE])
def test_every_model_runs_forward_and_backward(name):
    _forward_backward(name)


@pytest.mark.parametrize("activation, generator", DESIGNS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ["tiny_cnn", tiny_vit], ids=lambda n: getattr(n, "__name__", n))
def test_every_design_trains_on_channels_first_and_last_sites(name, activation, generator, single_thread):
    sites, model = _forward_backward(name, activation, generator, finite_grads=True)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert len(sites) == (4 if name == "tiny_cnn" else 2)


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
