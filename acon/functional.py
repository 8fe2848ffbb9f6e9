"""Functional ACON family: the formulas every module in ``acon`` calls.

All tensors are channels-first and broadcast against ``x``. ``acon_c`` is the general
smooth maximum ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x``; ACON-A and ACON-B are
its special cases. ``gate="hard_sigmoid"`` replaces the sigmoid by ``clamp(u / 6 + 1/2, 0, 1)``
(torch's ``hardsigmoid``), cheaper to compute. The reference versions are plain PyTorch; the
default entry points may dispatch to a fused implementation that must match the reference to 1e-5.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import Tensor

from acon import _fused

#: The gate of the smooth maximum: the paper's sigmoid, or the cheaper hard sigmoid.
GATES = ("hard_sigmoid", "sigmoid")


def check_gate(gate: str) -> str:
    """Refuse an unknown gate name, listing the valid ones."""
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid choices: {', '.join(GATES)}")
    return gate


def _gate(gate: str):
    return torch.nn.functional.hardsigmoid if check_gate(gate) == "hard_sigmoid" else torch.sigmoid


def acon_c_reference(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float, gate: str = "sigmoid") -> Tensor:
    """ACON-C in plain PyTorch, written as in the official release."""
    dpx = (p1 - p2) * x
    return dpx * _gate(gate)(beta * dpx) + p2 * x


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float, gate: str = "sigmoid") -> Tensor:
    """ACON-C: ``(p1 - p2) x * gate(beta (p1 - p2) x) + p2 x`` (fused kernel where available)."""
    y = _fused.try_acon_c(x, p1, p2, beta, hard=check_gate(gate) == "hard_sigmoid")
    return acon_c_reference(x, p1, p2, beta, gate) if y is None else y


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
        y = _fused.try_acon_c(x, one, torch.zeros_like(one), beta)
        if y is not None:
            return y
    return acon_a_reference(x, beta)


def meta_acon(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, gate: str = "sigmoid") -> Tensor:
    """meta-ACON: ACON-C with a generated ``beta`` (per sample, channel or element)."""
    return acon_c(x, p1, p2, beta, gate)


# Symbolic traces record these calls as single nodes instead of branching on Proxy shapes;
# the traced module then dispatches to the fused kernel at run time like eager code.
for _name in ("acon_a", "acon_b", "acon_c", "meta_acon"):
    torch.fx.wrap(_name)
