"""Beta generators for meta-ACON, seen from the design space: registry access and analytic cost.

The generator modules and their registry live in ``acon.beta``; this module re-exports that
registry (``GENERATORS``) and adds what an ablation needs: parameter and FLOP counts per generator.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

from acon.beta import BETA_GENERATORS, hidden_width

GENERATORS = BETA_GENERATORS

#: name -> complexity(channels, input_shape, **options) -> dict, for generators with a known formula.
_COMPLEXITY: dict[str, Callable[..., dict]] = {}


def get_generator(name: Any) -> Any:
    """Resolve a generator name to its factory; a class or callable is passed straight through."""
    return GENERATORS.get(name)


def register_generator(name: str, factory: Any = None, *, help: str | None = None, complexity: Callable[..., dict] | None = None, override: bool = False):
    """Register ``factory(channels, **options) -> nn.Module`` as a beta generator; usable as a decorator.

    ``complexity(channels, input_shape, **options)`` optionally gives its analytic cost (see
    ``generator_complexity``); without it ``generator_complexity`` refuses the name.
    """
    if factory is None:
        return lambda f: register_generator(name, f, help=help, complexity=complexity, override=override)
    GENERATORS.register(name, factory, help=help, override=override)
    if complexity is not None:
        _COMPLEXITY[name] = complexity
    return factory


def takes_option(generator: Any, option: str) -> bool:
    """Whether the generator's factory accepts ``option`` (``channel`` is the official MetaAconC)."""
    if generator == "channel":
        return True
    params = inspect.signature(get_generator(generator)).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


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
      ``gate="hard_sigmoid"`` replaces the sigmoid by ``u / 6 + 1/2`` (1 mul, 1 add) and a clamp
      to [0, 1], a compare-and-select counted in none of these kinds.
    """
    shape = _check_shape(channels, input_shape)
    try:
        formula = _COMPLEXITY[name]
    except KeyError:
        GENERATORS.get(name)  # an unknown name gets the registry's error listing valid choices
        raise ValueError(f"generator {name!r} has no analytic complexity; register it with complexity=...") from None
    cost = formula(channels, shape, **options)
    return _plus(cost, _acon_c_cost(channels, shape, options.get("gate", "sigmoid")))


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


def _acon_c_cost(channels: int, shape: tuple[int, ...], gate: str = "sigmoid") -> dict:
    """The ACON-C formula shared by every generator; p1 and p2 are 2C parameters."""
    n, hard = math.prod(shape), gate == "hard_sigmoid"
    return _cost(params=2 * channels, sigmoid=0 if hard else n, mul=(5 if hard else 4) * n, add=(2 if hard else 1) * n + channels)


def _channel_cost(channels: int, shape: tuple[int, ...], *, r: int = 16, width_rule: str = "official", bn: bool = True, bias: bool = True, **_: Any) -> dict:
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


_COMPLEXITY.update(channel=_channel_cost, layer=_layer_cost, pixel=_pixel_cost, learned=_learned_cost, fixed=_fixed_cost)
