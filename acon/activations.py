"""The activation registry: ACON variants, the baselines they are compared with, the gated control and the rivals.

Importing this module loads every built-in entry: the core ones live with the registry (``acon._activation_registry``),
and ``acon.gated`` and ``acon.rivals`` register theirs there. Every entry is ``factory(channels, **options) ->
nn.Module`` and accepts exactly the options ``activation_options`` lists: baselines none, PReLU ``channel_dim``,
ACON-A/B/C their constructor's, meta-ACON ``generator`` plus that generator's. ``create_activation`` builds them
and refuses any other keyword.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from acon import gated as _gated  # noqa: F401  (registers se_control)
from acon import rivals as _rivals  # noqa: F401  (registers DY-ReLU, FReLU, PAU, SMU, APA)
from acon._activation_registry import ACTIVATIONS
from acon.generators import generator_entry
from acon.registry import check_options


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
