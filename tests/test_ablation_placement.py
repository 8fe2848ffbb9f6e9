"""Placement policies and call-site surgery: which calls change, at which width, with which errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import ablation
import acon
from acon import MetaAconC
from ablation.sites import assign_stages


def _tiny_bottleneck_resnet(*, num_classes=10, in_channels=3, small_input=False):
    """A one-block-per-stage torchvision Bottleneck ResNet: the real block code, few parameters."""
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=num_classes)


def _paths(sites):
    return [s.path for s in sites]


def test_bottleneck_relu_called_three_times_gets_three_modules_of_widths_w_w_4w():
    model, sites = ablation.build_model(_tiny_bottleneck_resnet, input_size=32, placement="glob:layer2.0.relu", r=4)
    assert _paths(sites) == ["layer2.0.relu#1", "layer2.0.relu#2", "layer2.0.relu#3"]
    w = 128
    assert [s.width for s in sites] == [w, w, 4 * w]
    modules = [model.get_submodule(s.target) for s in sites]
    assert [m.channels for m in modules] == [w, w, 4 * w]
    assert len({id(m) for m in modules}) == 3
    assert [s.target for s in sites] == ["layer2.0.relu_1", "layer2.0.relu_2", "layer2.0.relu_3"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bottleneck_3x3_picks_the_relu_after_bn2_of_each_block():
    _, sites = ablation.build_model(_tiny_bottleneck_resnet, input_size=32, placement="bottleneck_3x3", r=4)
    assert _paths(sites) == [f"layer{i}.0.relu#2" for i in range(1, 5)]
    assert [s.width for s in sites] == [64, 128, 256, 512]
    assert [s.stage for s in sites] == [1, 2, 3, 4]


def test_bottleneck_3x3_on_basic_blocks_selects_nothing_and_says_so():
    with pytest.raises(ValueError, match=r"placement 'bottleneck_3x3' selects no activation site of model 'resnet20'"):
        ablation.build_model("resnet20", placement="bottleneck_3x3")


def test_policies_on_cifar_resnet20():
    sites = ablation.list_sites(ablation.create_model("resnet20"), (1, 3, 32, 32))
    assert len(sites) == 19 and [s.index for s in sites] == list(range(19))
    pick = lambda spec: _paths(ablation.select_sites(spec, sites))  # noqa: E731
    assert pick("all") == _paths(sites) and pick("none") == []
    assert pick("first:3") == ["relu", "layer1.0.relu#1", "layer1.0.relu#2"]
    assert pick("last:2") == ["layer3.2.relu#1", "layer3.2.relu#2"]
    assert pick("stage:0") == ["relu"]
    assert len(pick("stage:2")) == 6 and all(p.startswith("layer2.") for p in pick("stage:2"))
    assert pick("last_stage") == pick("stage:3")
    assert pick("glob:layer3.1.*") == ["layer3.1.relu#1", "layer3.1.relu#2"]
    assert pick("glob:*relu#2") == [p for p in _paths(sites) if p.endswith("#2")]
    assert [s.width for s in sites] == [16] * 7 + [32] * 6 + [64] * 6


@pytest.mark.parametrize(
    "spec, message",
    [
        ("first:x", "first:K needs a positive integer K, got 'x'"),
        ("last:0", "last:K needs a positive integer K, got '0'"),
        ("first", "placement first:K needs its K"),
        ("stage:-1", "stage:I needs a non-negative integer I, got '-1'"),
        ("all:3", "placement 'all' takes no parameter"),
        ("glob:", "glob:PATTERN needs a non-empty PATTERN"),
    ],
)
def test_bad_policy_parameters_are_clear_value_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        ablation.build_model("tiny_cnn", placement=spec, in_channels=1)


def test_unknown_policy_and_empty_selection():
    with pytest.raises(KeyError, match="valid choices: all, bottleneck_3x3, first, glob, last, last_stage, none, stage"):
        ablation.build_model("tiny_cnn", placement="everything", in_channels=1)
    with pytest.raises(ValueError, match=r"'stage:7' selects no activation site of model 'tiny_cnn' "
                       r"\(4 candidate sites, stages \[1, 2, 3\]; its activations: relu x4\)"):
        ablation.build_model("tiny_cnn", placement="stage:7", in_channels=1)


def test_empty_selection_names_the_kinds_the_model_has():
    with torch.device("meta"), pytest.raises(ValueError, match=r"placement 'all' selects no activation site of model "
                                             r"'mobilenet_v3_small' \(0 candidate sites, stages \[\]; its activations: "
                                             r"hardswish x19, relu x14\)"):
        ablation.build_model("mobilenet_v3_small", kinds=("gelu",))
    with pytest.raises(ValueError, match="unknown site kind 'swish'; valid choices: celu, elu, gelu, hardswish"):
        ablation.list_sites(ablation.create_model("tiny_cnn"), (1, 3, 8, 8), kinds=("swish",))


def test_reduction_ratio_errors_name_the_site():
    with pytest.raises(ValueError, match=r"site block1.2 \(width 16\): reduction ratio r must be an integer >= 1, got 2.5"):
        ablation.build_model("tiny_cnn", r=2.5, in_channels=1)
    with pytest.raises(ValueError, match=r"site block1.2 \(width 16\): reduction ratio r=0"):
        ablation.build_model("tiny_cnn", r=0, in_channels=1)
    # The official rule: any r >= 1 at any width, hidden width max(r, C // r).
    model, sites = ablation.build_model("tiny_cnn", r=32, in_channels=1)
    assert model.get_submodule(sites[0].target).fc1.out_channels == 32


def test_user_policy_registered_by_name():
    with ablation.PLACEMENTS.temporary("test_even", lambda sites, arg: [s for s in sites if s.index % 2 == 0]):
        _, sites = ablation.build_model("resnet20", placement="test_even", r=4)
    assert "test_even" not in ablation.PLACEMENTS
    assert [s.index for s in sites] == list(range(0, 19, 2))


class _Functional(nn.Module):
    """ReLU through F.relu (in place), torch.relu and Tensor.relu_, with the input read after an in-place call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x)
        F.relu(y, inplace=True)  # result unused: later reads of y must see the activated tensor
        z = torch.relu(y * 2)
        h = z.mean((2, 3))
        h.relu_()
        return self.fc(h) + y.mean()


def test_functional_and_method_calls_are_sites_and_inplace_is_respected():
    model = _Functional()
    sites = ablation.list_sites(model, (1, 3, 6, 6))
    assert _paths(sites) == ["relu#1", "relu#2", "relu_"]
    assert [s.width for s in sites] == [8, 8, 8] and [s.spatial for s in sites] == [(6, 6), (6, 6), ()]
    assert [s.inplace for s in sites] == [True, False, True]
    # Replace every site by a ReLU module: the function of the model must not change.
    new, changed = ablation.apply_placement(model, lambda s: nn.ReLU(), "all", input_shape=(1, 3, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    assert len(changed) == 3
    torch.testing.assert_close(new(x), model(x.clone()))
    assert [type(new.get_submodule(s.target)) for s in changed] == [nn.ReLU] * 3


def test_surgery_does_not_touch_the_original_model():
    model = ablation.create_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, sites = ablation.apply_placement(model, lambda s: MetaAconC(s.width, r=4), "all", input_shape=(1, 3, 32, 32))
    assert isinstance(model.layer1[0].relu, nn.ReLU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(new.state_dict()) > len(before)


def test_stage_rules():
    named = assign_stages(["conv1.2", "stage2.0.a", "stage3.0.a", "conv5.2"], [(56, 56), (28, 28), (14, 14), (7, 7)])
    assert named == [0, 2, 3, 3]
    by_size = assign_stages(["f.0", "f.1", "f.2", "f.3", "c.1"], [(32, 32), (32, 32), (16, 16), (1, 1), ()])
    assert by_size == [1, 1, 2, 2, 2]


def test_torchvision_relu_models_trace_with_expected_site_counts():
    counts = {}
    for name in ("shufflenet_v2_x0_5", "mobilenet_v2", "squeezenet1_1", "alexnet"):
        with torch.device("meta"):  # shapes only: no memory, no compute
            model = ablation.create_model(name)
        counts[name] = len(ablation.list_sites(model, (1, 3, 64, 64)))
    assert counts == {"shufflenet_v2_x0_5": 37, "mobilenet_v2": 35, "squeezenet1_1": 26, "alexnet": 7}


def test_sites_are_the_models_own_activations_and_never_se_gates():
    with torch.device("meta"):
        model = ablation.create_model("mobilenet_v3_small")
    every = ablation.list_sites(model, (1, 3, 64, 64))
    relu = ablation.list_sites(model, (1, 3, 64, 64), kinds=("relu",))
    assert len(relu) == 14 and len(every) == 33 and ablation.describe_replaced(every) == "hardswish x19, relu x14"
    assert every[0].path == "features.0.2" and every[0].width == 16 and every[0].replaced == "hardswish"  # the stem
    # Squeeze-excite: its inner ReLU (fc1 -> relu) is a site, its Hardsigmoid scale never is.
    assert "features.1.block.1.activation" in _paths(every)
    assert not any("scale_activation" in p for p in _paths(every))


class _Gated(nn.Module):
    """A SiLU as a squeeze-excite gate, a GELU-gated linear unit, and one plain GELU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.gate = nn.SiLU()
        self.act = nn.GELU()

    def forward(self, x):
        y = self.act(self.conv(x))
        y = y * self.gate(self.fc(y.mean((2, 3), keepdim=True)))  # SE: the SiLU scales y
        a, b = y.chunk(2, dim=1)
        return F.gelu(a) * b  # GLU: the GELU gates b


def test_activations_feeding_a_multiply_as_gates_are_not_sites():
    sites = ablation.list_sites(_Gated(), (1, 3, 4, 4))
    assert _paths(sites) == ["act"] and sites[0].replaced == "gelu" and sites[0].width == 8


def test_channels_last_sites_get_the_feature_axis():
    with torch.device("meta"):
        vit = ablation.create_model("vit_b_32")
        convnext = ablation.create_model("convnext_tiny")
    vit_sites = ablation.list_sites(vit, (1, 3, 224, 224))
    assert {(s.width, s.channel_dim, s.spatial, s.replaced) for s in vit_sites} == {(3072, 2, (50,), "gelu")}
    cn = ablation.list_sites(convnext, (1, 3, 64, 64))
    assert cn[0].width == 4 * 96 and cn[0].channel_dim == 3 and cn[0].spatial == (16, 16)  # (N, H, W, C) MLP
    model, sites = ablation.build_model(tiny_vit, r=4, input_size=32)
    module = model.get_submodule(sites[0].target)
    assert (module.channels, module.channel_dim, len(sites)) == (32, 2, 2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def tiny_vit(*, num_classes=10, in_channels=3, small_input=False):
    """torchvision's VisionTransformer at toy size: GELU sites on (N, L, C) tokens."""
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=num_classes)


class _Originals(nn.Module):
    """One site of each call form: a ReLU module, F.gelu with a keyword, and a tensor method."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = F.gelu(self.relu(self.conv(x)), approximate="tanh")
        return y.relu()


def test_surgery_hands_the_replaced_module_to_factories_that_declare_original():
    got = []

    def recording(channels, *, original=None):
        got.append((channels, original))
        return nn.Identity()

    def plain(channels, **options):
        got.append((channels, sorted(options)))
        return nn.Identity()

    with acon.ACTIVATIONS.temporary("test_recording", recording), acon.ACTIVATIONS.temporary("test_plain", plain):
        _, sites = ablation.build_model(lambda **_: _Originals(), activation="test_recording", input_size=4)
        ablation.build_model(lambda **_: _Originals(), activation="test_plain", input_size=4)
    assert [s.replaced for s in sites] == ["relu", "gelu", "relu"]
    originals = [o for _, o in got[:3]]
    assert [type(o) for o in originals] == [nn.ReLU, nn.GELU, nn.ReLU] and [c for c, _ in got[:3]] == [8, 8, 8]
    assert originals[0].inplace and originals[1].approximate == "tanh"  # the model's module; F.gelu's keyword kept
    assert got[3:] == [(8, [])] * 3  # a factory without ``original`` gets nothing new
    assert "test_recording" not in acon.ACTIVATIONS
