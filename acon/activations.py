"""The activation registry: ACON variants and the baselines they are compared with.

Every entry is ``factory(channels, **options) -> nn.Module``; baselines ignore ``channels``
except PReLU (one slope per channel). ``create_activation`` is the one way to build them.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from acon import _layout
from acon.beta import BETA_GENERATORS
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
from acon.registry import Registry

ACTIVATIONS = Registry(
    "activation",
    doc="factory(channels, **options) -> nn.Module acting elementwise on (N, C, ...) inputs",
)

#: Options a design-space sweep passes to every activation; factories without them ignore them.
DESIGN_OPTIONS = ("generator", "r", "width_rule", "bn", "bias", "channel_dim", "gate")


def _baseline(module_cls: type[nn.Module], **fixed: Any):
    def factory(channels: int, **_: Any) -> nn.Module:
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
def _prelu(channels: int, *, channel_dim: int = 1, **_: Any) -> nn.Module:
    return nn.PReLU(channels) if channel_dim == 1 else _PReLUOnAxis(channels, channel_dim)


@ACTIVATIONS.register("acon_a", help="ACON-A: x * sigmoid(beta x), learned per-channel beta")
def _acon_a(channels: int, *, channel_dim: int = 1, **_: Any) -> nn.Module:
    return AconA(channels, channel_dim=channel_dim)


@ACTIVATIONS.register("acon_b", help="ACON-B: smooth max of x and p x, learned p and beta")
def _acon_b(channels: int, *, channel_dim: int = 1, **_: Any) -> nn.Module:
    return AconB(channels, channel_dim=channel_dim)


@ACTIVATIONS.register("acon_c", help="ACON-C: smooth max of p1 x and p2 x, learned p1, p2, beta")
def _acon_c(channels: int, *, channel_dim: int = 1, gate: str = "sigmoid", **_: Any) -> nn.Module:
    return AconC(channels, channel_dim=channel_dim, gate=gate)


@ACTIVATIONS.register("meta_acon", help="meta-ACON: ACON-C with beta = G(x); generator=layer|channel|pixel|...")
def _meta_acon(channels: int, *, generator: Any = "channel", channel_dim: int = 1, **options: Any) -> nn.Module:
    return create_meta_acon(channels, generator=generator, channel_dim=channel_dim, **options)


def create_meta_acon(channels: int, *, generator: Any = "channel", channel_dim: int = 1, **options: Any) -> nn.Module:
    """meta-ACON with the named (or given) beta generator.

    ``channel`` gives the official ``MetaAconC`` layout; ``learned`` gives ``AconC``; ``fixed``
    gives ``AconC`` with a constant beta (``beta=``); any other generator wraps ``MetaAcon``.
    """
    if generator == "channel":
        return MetaAconC(channels, channel_dim=channel_dim, **_accepted(MetaAconC, options))
    gate = options.get("gate", "sigmoid")
    if generator == "learned":
        return AconC(channels, channel_dim=channel_dim, beta=options.get("beta"), gate=gate)
    if generator == "fixed":
        return AconC(channels, channel_dim=channel_dim, beta=options.get("beta", 1.0), learn_beta=False, gate=gate)
    factory = BETA_GENERATORS.get(generator)
    return MetaAcon(channels, factory(channels, **_accepted(factory, options)), channel_dim=channel_dim, gate=gate)


def _accepted(factory: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Keep the options ``factory`` accepts; the shared design options others lack are dropped."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    unknown = [k for k in options if k not in params and k not in DESIGN_OPTIONS and k != "beta"]
    if unknown:
        raise TypeError(f"{getattr(factory, '__name__', factory)} does not accept option(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in options.items() if k in params}


def get_activation(name: Any) -> Any:
    """Resolve an activation name to its factory; a callable is passed straight through."""
    return ACTIVATIONS.get(name)


def create_activation(name: Any, channels: int, **options: Any) -> nn.Module:
    """Build the activation ``name`` for ``channels`` channels."""
    return get_activation(name)(channels, **options)
