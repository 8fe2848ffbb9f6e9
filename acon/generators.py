"""The beta-generator registry: what meta-ACON builds for each generator name, with its cost.

An entry builds the whole meta-ACON activation whose beta the generator makes: ``channel`` is
the official ``MetaAconC``, ``learned`` and ``fixed`` are ``AconC``, and a beta module such as
``LayerBeta`` is wrapped in ``MetaAcon``. Each entry carries its accepted options and its
analytic cost (``generator_complexity``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from torch import nn

from acon.beta import LayerBeta, PixelBeta, hidden_width
from acon.modules import AconC, Init, MetaAcon, MetaAconC
from acon.registry import Entry, Registry, keyword_options

GENERATORS = Registry(
    "beta generator",
    doc="builder(channels, *, channel_dim=1, p1=None, p2=None, **options) -> nn.Module: meta-ACON (ACON-C) "
    "with this generator's beta. Metadata: options (accepted keywords), complexity(channels, shape, **options).",
    meta={"options": None, "complexity": None},
)

#: Options of ``MetaAcon`` itself (channel_dim, p1, p2 ...), read from its signature; the rest go to the beta module.
_META_ACON_OPTIONS = keyword_options(MetaAcon) - {"generator"}
#: ``AconC``'s options; ``learned`` and ``fixed`` set its beta.
_ACON_C_OPTIONS = keyword_options(AconC) - {"beta", "learn_beta"}


def _meta_acon_with(beta: Callable[..., nn.Module]) -> tuple[Callable[..., nn.Module], frozenset[str] | None]:
    """The builder of ``MetaAcon(channels, beta(channels, **options))`` and the options it accepts."""

    def build(channels: int, **options: Any) -> nn.Module:
        own = {k: options.pop(k) for k in list(options) if k in _META_ACON_OPTIONS}
        return MetaAcon(channels, beta(channels, **options), **own)

    build.__doc__ = beta.__doc__
    own = keyword_options(beta)
    return build, None if own is None else own | _META_ACON_OPTIONS


def register_generator(name: str, beta: Any = None, *, help: str | None = None, complexity: Callable[..., dict] | None = None,
                       override: bool = False):
    """Register ``beta(channels, **options) -> nn.Module`` (channels-first x -> beta) as a generator;
    usable as a decorator. ``complexity(channels, shape, **options)`` gives its analytic cost."""
    if beta is None:
        return lambda b: register_generator(name, b, help=help, complexity=complexity, override=override)
    build, options = _meta_acon_with(beta)
    GENERATORS.register(name, build, help=help, override=override, options=options, complexity=complexity)
    return beta


def generator_entry(generator: Any) -> Entry:
    """The entry of a generator name; a beta module factory (not a name) gets an unregistered one."""
    if isinstance(generator, str):
        return GENERATORS.entry(generator)
    build, options = _meta_acon_with(generator)
    return Entry(getattr(generator, "__name__", "generator"), build, meta={"options": options, "complexity": None})


# ---- analytic cost ------------------------------------------------------------------------------

def generator_complexity(name: str, channels: int, input_shape: Sequence[int], **options: Any) -> dict:
    """Analytic params, MACs and elementwise ops of one meta-ACON activation with generator ``name``.

    ``input_shape`` is the activation's input, batch included: ``(N, C)`` or ``(N, C, *spatial)``;
    op counts are for the whole batch, parameter counts are per module. Conventions:

    - ``macs``: multiply-accumulates of the generator's 1x1 convs (``channel`` only); a conv's bias
      add is part of the conv, as in FlopCounterMode and fvcore, and is not counted again.
    - ``elementwise`` counts output elements per op kind: ``sigmoid``; ``mul`` (a division counts
      as a mul); ``add`` (a subtraction counts as an add); ``mean``: elements read by a mean or sum
      reduction. BatchNorm in eval mode costs 1 mul + 1 add per element.
    - The ACON-C formula ``(p1-p2) x * sigmoid(beta (p1-p2) x) + p2 x`` costs, per element of x,
      4 mul, 1 add, 1 sigmoid, plus C adds for ``p1 - p2`` (once per call, not per sample).
      These count the formula as written, whichever kernel (fused or reference) runs it.
    """
    shape = _check_shape(channels, input_shape)
    formula = GENERATORS.entry(name).meta["complexity"]
    if formula is None:
        raise ValueError(f"generator {name!r} has no analytic complexity; register it with complexity=...")
    return _plus(formula(channels, shape, **options), _acon_c_cost(channels, shape))


def _check_shape(channels: int, input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or shape[1] != channels:
        raise ValueError(f"input_shape must be (N, C, ...) with C = {channels}, got {shape}")
    return shape


def _cost(params: int = 0, macs: int = 0, sigmoid: int = 0, mul: int = 0, add: int = 0, mean: int = 0) -> dict:
    return {"params": params, "macs": macs, "elementwise": {"sigmoid": sigmoid, "mul": mul, "add": add, "mean": mean}}


def _plus(a: dict, b: dict) -> dict:
    ew = {k: a["elementwise"][k] + b["elementwise"][k] for k in a["elementwise"]}
    return {"params": a["params"] + b["params"], "macs": a["macs"] + b["macs"], "elementwise": ew}


def _acon_c_cost(channels: int, shape: tuple[int, ...]) -> dict:
    """The ACON-C formula shared by every generator; p1 and p2 are 2C parameters."""
    n = math.prod(shape)
    return _cost(params=2 * channels, sigmoid=n, mul=4 * n, add=n + channels)


def _channel_cost(channels: int, shape: tuple[int, ...], *, r: int = 16, width_rule: str = "official", bn: bool = True,
                  bias: bool = True, **_: Any) -> dict:
    batch, hidden = shape[0], hidden_width(channels, r, width_rule)
    params = 2 * channels * hidden + (hidden + channels) * (int(bias) + 2 * int(bn))
    bn_ops = batch * (hidden + channels) if bn else 0
    pooled = len(shape) > 2  # (N, C) inputs are already pooled
    mean = math.prod(shape) if pooled else 0
    scale = batch * channels if pooled else 0  # the pool is a sum times 1/(H W): N C muls
    return _cost(params=params, macs=2 * batch * channels * hidden, sigmoid=batch * channels, mul=bn_ops + scale,
                 add=bn_ops, mean=mean)


def _layer_cost(channels: int, shape: tuple[int, ...], *, reduce: str = "sum", **_: Any) -> dict:
    batch = shape[0]
    return _cost(sigmoid=batch, mul=batch if reduce == "mean" else 0, mean=math.prod(shape))


def _pixel_cost(channels: int, shape: tuple[int, ...], **_: Any) -> dict:
    return _cost(sigmoid=math.prod(shape))


def _learned_cost(channels: int, shape: tuple[int, ...], **_: Any) -> dict:
    return _cost(params=channels)  # the beta parameter; the formula is counted by the caller


def _fixed_cost(channels: int, shape: tuple[int, ...], **_: Any) -> dict:
    return _cost()  # beta is a buffer, not a parameter


# ---- the built-in generators ------------------------------------------------------------------

def _learned(channels: int, *, init: float | Init = 1.0, **options: Any) -> AconC:
    """ACON-C: a learned per-channel beta starting at ``init``, not input-dependent."""
    return AconC(channels, beta=init, **options)


def _fixed(channels: int, *, beta: float | Init = 1.0, **options: Any) -> AconC:
    """ACON-C with a constant ``beta`` kept as a buffer, never trained."""
    return AconC(channels, beta=beta, learn_beta=False, **options)


GENERATORS.register("channel", MetaAconC, complexity=_channel_cost,
                    help="one beta per sample and channel: the official MetaAconC (r, width_rule, bn, bias)")
register_generator("layer", LayerBeta, complexity=_layer_cost, help="one beta per sample and layer: sigmoid(sum of x)")
register_generator("pixel", PixelBeta, complexity=_pixel_cost, help="one beta per element: sigmoid(x)")
GENERATORS.register("learned", _learned, options=_ACON_C_OPTIONS | {"init"}, complexity=_learned_cost,
                    help="a learned per-channel beta, not input-dependent: ACON-C (init=)")
GENERATORS.register("fixed", _fixed, options=_ACON_C_OPTIONS | {"beta"}, complexity=_fixed_cost,
                    help="a constant beta you give (beta=), kept as a buffer")
