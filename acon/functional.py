"""Functional ACON family: the formulas every module in ``acon`` calls.

All tensors are channels-first and broadcast against ``x``. ``acon_c`` is the general
smooth maximum ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x``; ACON-A and ACON-B are
its special cases. The reference versions are plain PyTorch; the default entry points
may dispatch to a fused implementation that must match the reference to 1e-5.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import Tensor

from acon import _fused


def acon_c_reference(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-C in plain PyTorch, written as in the official release."""
    dpx = (p1 - p2) * x
    return dpx * torch.sigmoid(beta * dpx) + p2 * x


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-C: ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x`` (fused kernel where available)."""
    if _fused.can_fuse(x, p1, p2, beta):
        return _fused.acon_c(x, p1, p2, beta)
    return acon_c_reference(x, p1, p2, beta)


def acon_b_reference(x: Tensor, p: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-B in plain PyTorch."""
    return acon_c_reference(x, torch.ones_like(p), p, beta)


def acon_b(x: Tensor, p: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-B: ``(1 - p) x * sigmoid(beta (1 - p) x) + p x`` (ACON-C with p1 = 1, p2 = p)."""
    return acon_c(x, torch.ones_like(p), p, beta)


def acon_a_reference(x: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-A in plain PyTorch."""
    return x * torch.sigmoid(beta * x)


def acon_a(x: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-A: ``x * sigmoid(beta x)`` (Swish with a learnable beta): ACON-C with p1 = 1, p2 = 0."""
    if isinstance(x, Tensor) and x.dim() >= 2:
        one = x.new_ones((1, x.shape[1]) + (1,) * (x.dim() - 2))
        if _fused.can_fuse(x, one, one, beta):
            return _fused.acon_c(x, one, torch.zeros_like(one), beta)
    return acon_a_reference(x, beta)


def meta_acon(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """meta-ACON: ACON-C with a generated ``beta`` (per sample, channel or element)."""
    return acon_c(x, p1, p2, beta)


# Symbolic traces record these calls as single nodes instead of branching on Proxy shapes;
# the traced module then dispatches to the fused kernel at run time like eager code.
for _name in ("acon_a", "acon_b", "acon_c", "meta_acon"):
    torch.fx.wrap(_name)
