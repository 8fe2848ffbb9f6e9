"""The activation registry: ACON variants and the baselines they are compared with.

Every entry is ``factory(channels, **options) -> nn.Module`` and accepts exactly the options
``activation_options`` lists: baselines none, PReLU ``channel_dim``, ACON-A/B/C their constructor's,
meta-ACON ``generator`` plus that generator's. ``create_activation`` builds them and refuses any other keyword.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from acon import _layout
from acon.generators import generator_entry
from acon.modules import AconA, AconB, AconC
from acon.registry import Registry, check_options

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


def activation_options(name: Any, generator: Any = None) -> frozenset[str] | None:
    """The keywords ``create_activation(name, C, ...)`` accepts (None: any). An activation that takes
    ``generator`` also takes that generator's options (``generator=None``: the activation's default)."""
    return _accepted(name, generator)[1]


def _accepted(name: Any, generator: Any) -> tuple[str, frozenset[str] | None]:
    """(how to name the activation in an error, its accepted options)."""
    entry = ACTIVATIONS.entry(name)
    own = entry.options
    if own is None or "generator" not in own:
        return f"activation {entry.name!r}", own
    if generator is None:
        generator = _default(entry.obj, "generator")
        if generator is None:  # no default to read: the factory itself decides
            return f"activation {entry.name!r}", None
    gen = generator_entry(generator)
    return f"activation {entry.name!r} with generator {gen.name!r}", None if gen.options is None else own | gen.options


def _default(factory: Any, param: str) -> Any:
    """The default value of ``factory``'s parameter ``param``, or None."""
    found = inspect.signature(factory).parameters.get(param)
    return None if found is None or found.default is found.empty else found.default


def get_activation(name: Any) -> Any:
    """Resolve an activation name to its factory; a callable is passed straight through."""
    return ACTIVATIONS.get(name)


def create_activation(name: Any, channels: int, **options: Any) -> nn.Module:
    """Build the activation ``name`` for ``channels`` channels; an option it does not accept is an error."""
    what, accepted = _accepted(name, options.get("generator"))
    check_options(what, options, accepted)
    return get_activation(name)(channels, **options)


def activation_complexity(name: Any, channels: int, input_shape, **options: Any) -> dict:
    """Analytic cost of one activation module ``name`` on an input of ``input_shape`` (batch included, ``(N, C,
    ...)``): ``{"params": int, "macs": int, "elementwise": {kind: count}}``, kinds and conventions as
    ``ablation.complexity.count`` counts them (``KINDS``: sigmoid, mul, add, mean, other; one op per output element,
    reductions per input element, eval-mode BN one mul and one add per element). Only entries registered with
    ``complexity=`` have one; meta-ACON's is ``acon.generators.generator_complexity``."""
    entry = ACTIVATIONS.entry(name)
    formula = entry.meta.get("complexity")
    if formula is None:
        raise ValueError(f"activation {entry.name!r} has no analytic complexity; register it with complexity=...")
    check_options(f"activation {entry.name!r}", options, entry.options)
    return formula(channels, tuple(int(s) for s in input_shape), **options)


from acon import gated as _gated  # noqa: E402,F401  (registers se_control in ACTIVATIONS, defined above)
from acon import rivals as _rivals  # noqa: E402,F401  (registers DY-ReLU, FReLU, PAU, SMU, APA, defined above)
