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
from acon import BETA_GENERATORS, MetaAcon, MetaAconC, create_activation
from acon.registry import UnknownNameError


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_generators_registry_is_the_acon_registry():
    assert ablation.GENERATORS is BETA_GENERATORS
    assert {"channel", "layer", "pixel", "learned", "fixed"} <= set(ablation.list_generators())
    assert ablation.get_generator("pixel") is BETA_GENERATORS.get("pixel")


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


def test_user_generator_registered_from_test_module_builds_a_model():
    name = "test_half_beta"
    ablation.register_generator(name, _HalfBeta, help="test generator", override=True)
    model, sites = ablation.build_model("tiny_cnn", in_channels=1, generator=name, scale=0.25)
    assert len(sites) == 4
    acts = [model.get_submodule(s.target) for s in sites]
    assert all(isinstance(a, MetaAcon) and isinstance(a.generator, _HalfBeta) for a in acts)
    assert [a.generator.w.shape[1] for a in acts] == [16, 32, 64, 32]
    assert acts[0].generator.scale == 0.25
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


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
        ("learned", {}),
        ("fixed", {"beta": 2.0}),
    ],
)
@pytest.mark.parametrize("channels", [24, 128])
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


def test_generator_complexity_bad_input():
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, ...\) with C = 8"):
        ablation.generator_complexity("pixel", 8, (1, 4, 2, 2))
    with pytest.raises(KeyError, match="valid choices"):
        ablation.generator_complexity("pixl", 8, (1, 8))
    ablation.register_generator("test_no_formula", _HalfBeta, override=True)
    with pytest.raises(ValueError, match="no analytic complexity"):
        ablation.generator_complexity("test_no_formula", 8, (1, 8))
