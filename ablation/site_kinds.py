"""Which activations count as sites: ``SITE_KINDS``, the kinds a library adds (``add_site_kind``), and the kind
of one call (``kind_of`` on a graph node, ``module_kind`` on a module).

The lowest layer of site finding: the tracer, the run-time counter and the graph search all read it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

#: kind -> (module classes, functions, tensor method names) that count as activation sites. The
#: first kind that matches names a call (relu6 before hardtanh: nn.ReLU6 subclasses nn.Hardtanh).
#: Sigmoid, hard-sigmoid, tanh and softmax are left out: in classifiers they gate or normalise.
SITE_KINDS: dict[str, tuple[tuple[type, ...], tuple[Any, ...], tuple[str, ...]]] = {
    "relu": ((nn.ReLU,), (F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_")),
    "relu6": ((nn.ReLU6,), (F.relu6,), ()),
    "hardtanh": ((nn.Hardtanh,), (F.hardtanh, F.hardtanh_), ()),
    "leaky_relu": ((nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_), ()),
    "prelu": ((nn.PReLU,), (F.prelu, torch.prelu), ()),
    "elu": ((nn.ELU,), (F.elu, F.elu_), ()),
    "selu": ((nn.SELU,), (F.selu, F.selu_, torch.selu, torch.selu_), ()),
    "celu": ((nn.CELU,), (F.celu, F.celu_), ()),
    "gelu": ((nn.GELU,), (F.gelu,), ()),
    "silu": ((nn.SiLU,), (F.silu,), ()),
    "hardswish": ((nn.Hardswish,), (F.hardswish,), ()),
    "mish": ((nn.Mish,), (F.mish,), ()),
}

#: Python functions added by ``add_site_kind``: fx would trace into them, so they are autowrapped (one node a call).
_AUTOWRAPPED: list[Any] = []


def add_site_kind(kind: str, *, classes: tuple[type, ...] = (), functions: tuple[Any, ...] = ()) -> None:
    """Count more activation modules and functions as sites of ``kind`` (a library's own GELU, Swish ...).

    Their modules become fx leaves and their functions are autowrapped, so each call stays one node."""
    own_classes, own_functions, methods = SITE_KINDS[kind]
    SITE_KINDS[kind] = (own_classes + tuple(c for c in classes if c not in own_classes),
                        own_functions + tuple(f for f in functions if f not in own_functions), methods)
    _AUTOWRAPPED.extend(f for f in functions if f not in _AUTOWRAPPED)


def autowrapped_functions() -> tuple[Any, ...]:
    """The functions ``add_site_kind`` added, which the tracer keeps as one node a call."""
    return tuple(_AUTOWRAPPED)


def site_classes() -> tuple[type, ...]:
    """Every activation module class in ``SITE_KINDS``."""
    return tuple(c for classes, _, _ in SITE_KINDS.values() for c in classes)


def check_kinds(kinds: Sequence[str] | None) -> list[str]:
    """``kinds`` as a list (None: every kind); an unknown kind is a ValueError listing the valid ones."""
    if kinds is None:
        return list(SITE_KINDS)
    unknown = [k for k in kinds if k not in SITE_KINDS]
    if unknown:
        raise ValueError(f"unknown site kind {unknown[0]!r}; valid choices: {', '.join(sorted(SITE_KINDS))}")
    return list(kinds)


def module_kind(module: nn.Module) -> str:
    """The ``SITE_KINDS`` name of an activation module (one of ``site_classes()``)."""
    return next(kind for kind, (classes, _, _) in SITE_KINDS.items() if isinstance(module, classes))


def kind_of(gm: fx.GraphModule, n: fx.Node) -> str | None:
    """The ``SITE_KINDS`` name of the activation node ``n`` calls, or None if it calls none."""
    if n.op not in ("call_module", "call_function", "call_method"):
        return None
    module = gm.get_submodule(n.target) if n.op == "call_module" else None
    for kind, (modules, functions, methods) in SITE_KINDS.items():
        if module is not None and isinstance(module, modules):
            return kind
        if n.op == "call_function" and any(n.target is f for f in functions):
            return kind
        if n.op == "call_method" and n.target in methods:
            return kind
    return None
