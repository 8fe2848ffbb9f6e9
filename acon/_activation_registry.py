"""The activation registry and its core entries: the baselines, PReLU, ACON-A/B/C and meta-ACON.

A leaf: modules that add entries (``acon.gated``, ``acon.rivals``) import ``ACTIVATIONS`` from here and
register on import, so nothing imports back. Read the full list from ``acon.activations``, which loads them all.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from acon import _layout
from acon.generators import generator_entry
from acon.modules import AconA, AconB, AconC
from acon.registry import Registry

ACTIVATIONS = Registry(
    "activation",
    doc="factory(channels, **options) -> nn.Module acting elementwise on (N, C, ...) inputs. "
    "Metadata: options (accepted keywords; default: read from the factory's signature); complexity "
    "(``complexity(channels, input_shape, **options) -> dict``: analytic params, MACs and elementwise ops, "
    "``activation_complexity``).",
    meta={"options": None, "complexity": None},
)


def _baseline(module_cls: type[nn.Module], **fixed: Any):
    def factory(channels: int) -> nn.Module:
        return module_cls(**fixed)

    factory.__doc__ = module_cls.__doc__
    return factory


ACTIVATIONS.register("relu", _baseline(nn.ReLU), help="ReLU: max(x, 0)")
ACTIVATIONS.register("leaky_relu", _baseline(nn.LeakyReLU, negative_slope=0.01), help="LeakyReLU, slope 0.01")
ACTIVATIONS.register("silu", _baseline(nn.SiLU), help="SiLU / Swish: x * sigmoid(x)")
ACTIVATIONS.register("swish", _baseline(nn.SiLU), help="alias of silu: x * sigmoid(x)")
ACTIVATIONS.register("mish", _baseline(nn.Mish), help="Mish: x * tanh(softplus(x))")
ACTIVATIONS.register("gelu", _baseline(nn.GELU), help="GELU (erf form)")
ACTIVATIONS.register("identity", _baseline(nn.Identity), help="no activation")


class _PReLUOnAxis(nn.PReLU):
    """PReLU whose slopes run along ``channel_dim``: ``nn.PReLU`` always reads channels at axis 1."""

    def __init__(self, channels: int, channel_dim: int):
        super().__init__(channels)
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.num_parameters)
        return _layout.restore_channels(super().forward(xc), self.channel_dim)


@ACTIVATIONS.register("prelu", help="PReLU with one learned slope per channel")
def _prelu(channels: int, *, channel_dim: int = 1) -> nn.Module:
    return nn.PReLU(channels) if channel_dim == 1 else _PReLUOnAxis(channels, channel_dim)


ACTIVATIONS.register("acon_a", AconA, help="ACON-A: x * sigmoid(beta x), learned per-channel beta")
ACTIVATIONS.register("acon_b", AconB, help="ACON-B: smooth max of x and p x, learned p and beta")
ACTIVATIONS.register("acon_c", AconC, help="ACON-C: smooth max of p1 x and p2 x, learned p1, p2, beta")


@ACTIVATIONS.register("meta_acon", options=("generator",),
                      help="meta-ACON: ACON-C with beta = G(x); generator=layer|channel|pixel|... and its options")
def _meta_acon(channels: int, *, generator: Any = "channel", **options: Any) -> nn.Module:
    """meta-ACON built by the generator's registry entry; a beta module factory is wrapped in ``MetaAcon``."""
    return generator_entry(generator).obj(channels, **options)
