"""Beta generators in the design space: registry, user registration, options, analytic cost."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import ablation
from acon import _fused
from acon import GENERATORS, AconC, MetaAcon, MetaAconC, create_activation
from acon.registry import UnknownNameError


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture
def register_generator():
    """``ablation.register_generator`` whose registrations are removed after the test."""
    added = []

    def register(name, beta, **kwargs):
        ablation.register_generator(name, beta, **kwargs)
        added.append(name)

    yield register
    for name in added:
        GENERATORS.unregister(name)


def test_generators_registry_is_the_acon_registry():
    assert ablation.GENERATORS is GENERATORS
    assert {"channel", "layer", "pixel", "learned", "fixed"} <= set(ablation.list_generators())
    assert ablation.get_generator("pixel") is GENERATORS.get("pixel")


@pytest.mark.parametrize("name, cls", [("channel", MetaAconC), ("learned", AconC), ("fixed", AconC),
                                       ("layer", MetaAcon), ("pixel", MetaAcon)])
def test_an_entry_builds_exactly_what_meta_acon_builds(name, cls):
    direct, via_factory = GENERATORS.get(name)(8), create_activation("meta_acon", 8, generator=name)
    assert type(direct) is type(via_factory) is cls
    assert list(direct.state_dict()) == list(via_factory.state_dict())
    assert GENERATORS.get("channel") is MetaAconC  # the official layout is registered as itself


@pytest.mark.parametrize("name, takes, refuses", [
    ("channel", {"r", "width_rule", "bn", "bias", "p1", "p2", "channel_dim"}, {"reduce", "init"}),
    ("layer", {"reduce", "p1", "p2", "channel_dim"}, {"r", "bn"}),
    ("pixel", {"p1", "p2", "channel_dim"}, {"r", "reduce"}),
    ("learned", {"init", "p1", "p2", "channel_dim"}, {"r", "beta"}),
    ("fixed", {"beta", "p1", "p2", "channel_dim"}, {"r", "init"}),
])
def test_generator_options_are_entry_metadata(name, takes, refuses):
    options = GENERATORS.entry(name).options
    assert takes <= options and not refuses & options
    assert all(ablation.generators.takes_option(name, o) for o in takes)
    assert not any(ablation.generators.takes_option(name, o) for o in refuses)


def test_unknown_generator_lists_valid_choices():
    with pytest.raises(UnknownNameError, match="valid choices: channel, fixed, layer, learned, pixel"):
        ablation.get_generator("chanel")
    with pytest.raises(KeyError, match="valid choices"):
        ablation.build_model("tiny_cnn", generator="nope", in_channels=1)


class _HalfBeta(nn.Module):
    """A user generator: a learned scalar gate per channel, scaled by 0.5."""

    def __init__(self, channels: int, *, scale: float = 0.5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = torch.sigmoid(self.w) * self.scale
        return beta.reshape((1, -1) + (1,) * (x.ndim - 2))  # broadcast against (N, C) or (N, C, H, W)


def test_user_generator_registered_from_test_module_builds_a_model(register_generator):
    name = "test_half_beta"
    register_generator(name, _HalfBeta, help="test generator")
    assert GENERATORS.help(name) == "test generator" and GENERATORS.entry(name).options == {"scale", "p1", "p2", "channel_dim"}
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, generator=name, scale=0.25)
    assert len(sites) == 4
    acts = [model.get_submodule(s.target) for s in sites]
    assert all(isinstance(a, MetaAcon) and isinstance(a.generator, _HalfBeta) for a in acts)
    assert [a.generator.w.shape[1] for a in acts] == [16, 32, 64, 32]
    assert acts[0].generator.scale == 0.25
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"'scal' \(did you mean 'scale'\?\); valid options: channel_dim, generator, p1, p2, scale$"):
        ablation.build_model("tiny_cnn", in_channels=1, generator=name, scal=0.25)


def test_design_axes_reach_only_activations_that_take_them():
    # a study design with activation=relu has no generator or r: build_model drops them
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, activation="relu", generator="channel", r=16)
    assert all(isinstance(model.get_submodule(s.target), nn.ReLU) for s in sites)
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, activation="acon_c", generator="layer", r=4)
    assert all(type(model.get_submodule(s.target)) is AconC for s in sites)
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, generator="learned", r=4, init=3.0)
    assert all(torch.equal(model.get_submodule(s.target).beta, torch.full((1, s.width, 1, 1), 3.0)) for s in sites)


def test_build_model_refuses_an_option_naming_the_site():
    with pytest.raises(ValueError, match=r"site block1.2 \(width 16\): activation 'acon_c' does not accept option 'bn'"):
        ablation.build_model("tiny_cnn", in_channels=1, activation="acon_c", bn=False)


@pytest.mark.parametrize(
    "options, hidden",
    [({}, 16), ({"width_rule": "plain"}, 4), ({"r": 4}, 16), ({"r": 4, "width_rule": "plain"}, 16)],
)
def test_channel_generator_hidden_width_rule(options, hidden):
    options = {"r": 16, **options}
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, placement="glob:block3.*", **options)
    act = model.get_submodule(sites[0].target)
    assert isinstance(act, MetaAconC) and act.fc1.out_channels == hidden  # 64 channels


def test_channel_generator_bn_and_bias_switches():
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, placement="glob:block3.*", r=4, bn=False, bias=False)
    act = model.get_submodule(sites[0].target)
    assert act.fc1.bias is None and act.fc2.bias is None
    assert isinstance(act.bn1, nn.Identity) and isinstance(act.bn2, nn.Identity)
    assert _params(act) == 2 * 64 * 16 + 2 * 64


@pytest.mark.parametrize(
    "name, options",
    [
        ("channel", {"r": 16}),
        ("channel", {"r": 8, "width_rule": "plain", "bn": False}),
        ("channel", {"r": 4, "bias": False}),
        ("layer", {}),
        ("pixel", {}),
        ("channel", {"r": 16}),  # r > C/16 at C = 8: hidden 16
        ("learned", {}),
        ("learned", {"init": 3.0}),
        ("fixed", {"beta": 2.0}),
    ],
)
@pytest.mark.parametrize("channels", [8, 24, 128])
def test_generator_complexity_params_match_built_modules(name, options, channels):
    module = create_activation("meta_acon", channels, generator=name, **options)
    cost = ablation.generator_complexity(name, channels, (2, channels, 7, 7), **options)
    assert cost["params"] == _params(module)


def test_generator_complexity_macs_match_flop_counter():
    module = create_activation("meta_acon", 64, generator="channel", r=8).eval()
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(3, 64, 5, 5))
    cost = ablation.generator_complexity("channel", 64, (3, 64, 5, 5), r=8)
    assert cost["macs"] == 2 * 3 * 64 * 8 and counter.get_total_flops() == 2 * cost["macs"]


class _ElementwiseCounter(TorchDispatchMode):
    """Counts output elements per op kind with the convention of generator_complexity."""

    KINDS = {"sigmoid": "sigmoid", "mul": "mul", "div": "mul", "add": "add", "sub": "add", "mean": "mean", "sum": "mean"}

    def __init__(self):
        super().__init__()
        self.counts = dict.fromkeys(["sigmoid", "mul", "add", "mean"], 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = self.KINDS.get(func.overloadpacket.__name__.rstrip("_"))
        if kind == "mean":
            self.counts[kind] += args[0].numel()  # elements read by the reduction
        elif kind:
            self.counts[kind] += out.numel()
        return out


@pytest.mark.parametrize(
    "name, options, shape",
    [
        ("channel", {"r": 4, "bn": False}, (2, 16, 5, 5)),
        ("channel", {"r": 4, "bn": False}, (3, 16)),
        ("layer", {}, (2, 16, 5, 5)),
        ("layer", {"reduce": "mean"}, (2, 16, 3, 3)),
        ("pixel", {}, (2, 16, 4, 4)),
        ("learned", {}, (2, 16, 4, 4)),
        ("fixed", {"beta": 0.5}, (2, 16, 4, 4)),
    ],
)
def test_generator_complexity_elementwise_matches_executed_ops(name, options, shape):
    module = create_activation("meta_acon", 16, generator=name, **options).eval()
    x = torch.randn(shape)
    # The convention counts the formula as written (the reference), not a fused kernel's passes.
    with torch.no_grad(), _fused.use_fused(False), _ElementwiseCounter() as counter:
        module(x)
    cost = ablation.generator_complexity(name, 16, shape, **options)
    assert cost["elementwise"] == counter.counts
    assert cost["elementwise"]["sigmoid"] >= math.prod(shape)


def test_generator_complexity_counts_batchnorm_in_eval():
    with_bn = ablation.generator_complexity("channel", 64, (1, 64, 8, 8), r=16)
    without = ablation.generator_complexity("channel", 64, (1, 64, 8, 8), r=16, bn=False)
    assert with_bn["elementwise"]["mul"] - without["elementwise"]["mul"] == 16 + 64
    assert with_bn["params"] - without["params"] == 2 * (16 + 64)


@pytest.mark.parametrize("name", sorted(GENERATORS.names()))
@pytest.mark.parametrize("channels", [1, 8, 64])
def test_every_registered_generator_carries_its_cost(name, channels):
    module = create_activation("meta_acon", channels, generator=name)
    cost = ablation.generator_complexity(name, channels, (2, channels, 3, 3))
    assert cost["params"] == _params(module)
    assert cost["elementwise"]["sigmoid"] >= 2 * channels * 9  # the ACON-C formula's sigmoid, at least


def test_generator_complexity_bad_input(register_generator):
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, ...\) with C = 8"):
        ablation.generator_complexity("pixel", 8, (1, 4, 2, 2))
    with pytest.raises(KeyError, match="valid choices"):
        ablation.generator_complexity("pixl", 8, (1, 8))
    register_generator("test_no_formula", _HalfBeta)
    with pytest.raises(ValueError, match="no analytic complexity"):
        ablation.generator_complexity("test_no_formula", 8, (1, 8))
