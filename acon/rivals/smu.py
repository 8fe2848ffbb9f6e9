"""SMU and SMU-1: smooth maximum of x and alpha x, with a learned smoothness mu (Biswas et al., 2021).

Source: "SMU: smooth activation function for deep networks using smoothing maximum technique", Biswas, Kumar,
Banerjee, Pandey, arXiv 2111.04682 (CVPR 2022). The authors released no code; the paper gives alpha = 0.25
(fixed) and the initial mu (1e6 for SMU, 4.352665993287951e-9 for SMU-1), as does the common port
iFe1er/SMU_pytorch (``smu.py``), whose numbers these are. mu is one scalar per layer (per module).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from acon._activation_registry import ACTIVATIONS


class SMU(nn.Module):
    """``((1 + alpha) x + (1 - alpha) x erf(mu (1 - alpha) x)) / 2``, learned ``mu``, fixed ``alpha``.

    Computed as ``x * ((1 + alpha) / 2 + (1 - alpha) / 2 * erf(mu (1 - alpha) x))``: the same function with
    fewer ops. With mu = 1e6 it starts as LeakyReLU(alpha); mu -> 0 gives the line (1 + alpha) x / 2.
    Our guard, not the paper's: the scale ``mu (1 - alpha)`` is clamped to the input dtype's largest value.
    In float16 the initial 7.5e5 becomes inf, and inf * 0 made SMU(0) NaN (exact zeros are common inputs).
    """

    def __init__(self, channels: int | None = None, *, alpha: float = 0.25, mu: float = 1e6):
        super().__init__()
        self.channels, self.alpha = channels, float(alpha)
        self.mu = nn.Parameter(torch.tensor(float(mu)))

    def forward(self, x: Tensor) -> Tensor:
        a = self.alpha
        scale = (self.mu * (1 - a)).clamp(max=torch.finfo(x.dtype).max)
        return x * ((1 + a) / 2 + (1 - a) / 2 * torch.erf(scale * x))

    def extra_repr(self) -> str:
        return f"{self.channels}, alpha={self.alpha}"


class SMU1(nn.Module):
    """SMU-1: ``((1 + alpha) x + sqrt(((1 - alpha) x)^2 + mu^2)) / 2``, |u| smoothed as sqrt(u^2 + mu^2).

    mu starts at 4.352665993287951e-9 (the paper's value): mu^2 underflows to 0 in float16, where the
    gradient at x = 0 is then 0 / 0; keep the parameter in float32 or wider.
    """

    def __init__(self, channels: int | None = None, *, alpha: float = 0.25, mu: float = 4.352665993287951e-9):
        super().__init__()
        self.channels, self.alpha = channels, float(alpha)
        self.mu = nn.Parameter(torch.tensor(float(mu)))

    def forward(self, x: Tensor) -> Tensor:
        u = (1 - self.alpha) * x
        return (1 + self.alpha) / 2 * x + 0.5 * torch.sqrt(u * u + self.mu * self.mu)

    def extra_repr(self) -> str:
        return f"{self.channels}, alpha={self.alpha}"


def _cost(params: int, mul: int, add: int, other: int) -> dict:
    return {"params": params, "macs": 0, "elementwise": {"sigmoid": 0, "mul": mul, "add": add, "mean": 0, "other": other}}


def _smu_cost(channels: int, input_shape: Sequence[int], *, alpha: float = 0.25, mu: float = 1e6) -> dict:
    """Per element: mu' x, c2 erf, x * (...) (3 mul), c1 + ... (1 add), erf (1 other); once: mu (1 - alpha) (1 mul)
    and its clamp (1 other)."""
    n = math.prod(input_shape)
    return _cost(1, mul=3 * n + 1, add=n, other=n + 1)


def _smu1_cost(channels: int, input_shape: Sequence[int], *, alpha: float = 0.25, mu: float = 4.352665993287951e-9) -> dict:
    """Per element: (1 - alpha) x, u u, c1 x, 0.5 sqrt (4 mul), two adds, sqrt (1 other); once: mu mu (1 mul)."""
    n = math.prod(input_shape)
    return _cost(1, mul=4 * n + 1, add=2 * n, other=n)


ACTIVATIONS.register("smu", SMU, complexity=_smu_cost,
                     help="SMU: smooth max of x and 0.25 x through erf, learned smoothness mu (one per layer)")
ACTIVATIONS.register("smu1", SMU1, complexity=_smu1_cost,
                     help="SMU-1: smooth max of x and 0.25 x through sqrt(u^2 + mu^2), learned mu (one per layer)")
