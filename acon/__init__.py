"""ACON and meta-ACON activations ("Activate or Not", CVPR 2021) as PyTorch modules.

``acon.functional`` holds the formulas, ``acon.modules`` the layers, ``acon.beta`` the beta
generators and ``acon.activations`` the registry that builds any of them by name.
"""
from acon.activations import ACTIVATIONS, create_activation, create_meta_acon, get_activation
from acon.beta import BETA_GENERATORS, ChannelBeta, FixedBeta, LayerBeta, LearnedBeta, PixelBeta, hidden_width
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
from acon.registry import Registry, UnknownNameError

__all__ = [
    "ACTIVATIONS", "BETA_GENERATORS", "AconA", "AconB", "AconC", "ChannelBeta", "FixedBeta", "LayerBeta",
    "LearnedBeta", "MetaAcon", "MetaAconC", "PixelBeta", "Registry", "UnknownNameError", "create_activation",
    "create_meta_acon", "get_activation", "hidden_width",
]

from acon import gated as _gated  # noqa: E402,F401  (registers the se_control activation; needs the registry above)
