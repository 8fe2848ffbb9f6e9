"""Functional ACON family: the formulas every module in ``acon`` calls.

All tensors are channels-first and broadcast against ``x``. ``acon_c`` is the general
smooth maximum ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x``; ACON-A and ACON-B are
its special cases. The reference versions are plain PyTorch; the default entry points
may dispatch to a fused implementation that must match the reference to 1e-5.
"""
from __future__ import annotations

import torch
from torch import Tensor


def smooth_max(a: Tensor, b: Tensor, beta: Tensor | float) -> Tensor:
    """``S_beta(a, b) = (a - b) * sigmoid(beta * (a - b)) + b``."""
    d = a - b
    return d * torch.sigmoid(beta * d) + b


def acon_c_reference(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-C in plain PyTorch, written as in the official release."""
    dpx = (p1 - p2) * x
    return dpx * torch.sigmoid(beta * dpx) + p2 * x


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-C: ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x``."""
    return acon_c_reference(x, p1, p2, beta)


def acon_b(x: Tensor, p: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-B: ``(1 - p) x * sigmoid(beta (1 - p) x) + p x`` (ACON-C with p1 = 1, p2 = p)."""
    return acon_c(x, torch.ones_like(p), p, beta)


def acon_a(x: Tensor, beta: Tensor | float) -> Tensor:
    """ACON-A: ``x * sigmoid(beta x)`` (Swish with a learnable beta)."""
    return x * torch.sigmoid(beta * x)


def meta_acon(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """meta-ACON: ACON-C with a generated ``beta`` (per sample, channel or element)."""
    return acon_c(x, p1, p2, beta)
