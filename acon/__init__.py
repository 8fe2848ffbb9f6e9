"""ACON and meta-ACON activations ("Activate or Not", CVPR 2021) as PyTorch modules.

``acon.functional`` holds the formulas, ``acon.modules`` the layers, ``acon.beta`` the beta
generator modules, ``acon.generators`` and ``acon.activations`` the registries that build them by name.
"""
from acon.activations import ACTIVATIONS, activation_options, create_activation, get_activation
from acon.beta import ChannelBeta, LayerBeta, PixelBeta, hidden_width
from acon.generators import GENERATORS, register_generator
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
from acon.registry import Registry, UnknownNameError, UnknownOptionError

__all__ = [
    "ACTIVATIONS", "GENERATORS", "AconA", "AconB", "AconC", "ChannelBeta", "LayerBeta", "MetaAcon", "MetaAconC",
    "PixelBeta", "Registry", "UnknownNameError", "UnknownOptionError", "activation_options", "create_activation",
    "get_activation", "hidden_width", "register_generator",
]
