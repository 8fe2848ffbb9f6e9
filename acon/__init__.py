"""ACON and meta-ACON activations ("Activate or Not", CVPR 2021) as PyTorch modules.

``acon.functional`` holds the formulas, ``acon.modules`` the layers, ``acon.beta`` the beta
generator modules, ``acon.generators`` and ``acon.activations`` the registries that build them by name.

The names below load on first use, so that ``acon.registry`` (which the command
line needs to print its help or a one-line error) do not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "acon.activations": ("ACTIVATIONS", "activation_options", "create_activation", "get_activation"),
    "acon.beta": ("ChannelBeta", "LayerBeta", "PixelBeta", "hidden_width"),
    "acon.generators": ("GENERATORS", "register_generator"),
    "acon.modules": ("AconA", "AconB", "AconC", "MetaAcon", "MetaAconC"),
    "acon.registry": ("Registry", "UnknownNameError", "UnknownOptionError"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = [
    "ACTIVATIONS", "GENERATORS", "AconA", "AconB", "AconC", "ChannelBeta", "LayerBeta", "MetaAcon", "MetaAconC",
    "PixelBeta", "Registry", "UnknownNameError", "UnknownOptionError", "activation_options", "create_activation",
    "get_activation", "hidden_width", "register_generator",
]

if TYPE_CHECKING:  # what editors and type checkers see
    from acon.activations import ACTIVATIONS, activation_options, create_activation, get_activation
    from acon.beta import ChannelBeta, LayerBeta, PixelBeta, hidden_width
    from acon.generators import GENERATORS, register_generator
    from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
    from acon.registry import Registry, UnknownNameError, UnknownOptionError


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'acon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
