"""PAU: a learned rational activation ``P(x) / Q(x)`` whose denominator has no poles (Molina et al., ICLR 2020).

Source: "Padé Activation Units: End-to-end Learning of Flexible Activation Functions in Deep Networks",
Molina, Schramowski, Kersting, ICLR 2020 (arXiv 1907.06732); official code ml-research/pau (commit 286ccc5):
``pau/cuda/setup.py`` (the CUDA kernels), ``pau/cuda/python_imp/Pade.py`` (init coefficients, reference).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from acon._activation_registry import ACTIVATIONS

# ``get_constants_for_inits`` in pau/cuda/python_imp/Pade.py: (numerator a_0..a_5, denominator b_1..b_4), fitted
# to LeakyReLU(0.01) on [-3, 3] (pau/find_coefficients.ipynb). "leaky_relu" is the one ``pau.utils.PAU()`` uses.
INITS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "leaky_relu": ((3.35583603e-02, 5.05000375e-01, 1.65343934e+00, 2.01001052e+00, 9.31901999e-01, 1.52424124e-01),
                   (3.30847488e-06, 3.98021568e+00, 5.12471206e-07, 3.01830109e-01)),  # "pade_optimized_leakyrelu"
    "leaky_relu2": ((0.1494, 0.8779, 1.8259, 2.4658, 1.6976, 0.4414),
                    (0.0878, 3.3983, 0.0055, 0.3488)),  # "pade_optimized_leakyrelu2"
}
VERSIONS = ("A", "B")


class PAU(nn.Module):
    """``P(x) / Q(x)``, ``P(x) = a_0 + a_1 x + ... + a_m x^m``, one set of coefficients per layer (per module).

    ``version="A"`` (the official kernels): ``Q(x) = 1 + |b_1| |x| + |b_2| |x|^2 + ... + |b_n| |x|^n``.
    ``version="B"`` (the paper's Eq. "safe PAU"): ``Q(x) = 1 + |b_1 x + b_2 x^2 + ... + b_n x^n|``.
    Paper and code disagree here; the default follows the code (the reverted "pau versions" commit 64764cf
    names the two forms A and B). Either way ``Q >= 1``: the division cannot blow up.

    ``init``: a name of ``INITS`` (default: the official LeakyReLU(0.01) fit, degrees (5, 4)) or a pair
    ``(numerator, denominator)`` of coefficient sequences, which also sets the degrees ``(m, n)``.
    Both polynomials run by Horner's rule (the same function as the kernels' sum of powers).
    """

    def __init__(self, channels: int | None = None, *, version: str = "A", init: Any = "leaky_relu"):
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"unknown PAU version {version!r}; valid choices: {', '.join(VERSIONS)}")
        numerator, denominator = _coefficients(init)
        self.channels, self.version = channels, version
        self.numerator = nn.Parameter(torch.tensor(numerator, dtype=torch.get_default_dtype()))
        self.denominator = nn.Parameter(torch.tensor(denominator, dtype=torch.get_default_dtype()))

    @property
    def degrees(self) -> tuple[int, int]:
        """(m, n): the degrees of P and Q."""
        return self.numerator.numel() - 1, self.denominator.numel()

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.numerator, self.denominator
        if self.version == "A":
            q = _horner(b.abs(), x.abs()) + 1
        else:
            q = _horner(b, x).abs() + 1
        return (_horner(a[1:], x) + a[0]) / q

    def extra_repr(self) -> str:
        return f"{self.channels}, degrees={self.degrees}, version={self.version!r}"


def _horner(c: Tensor, x: Tensor) -> Tensor:
    """``c_0 x + c_1 x^2 + ... + c_k x^(k+1)`` (no constant term): k+1 muls and k adds per element."""
    y = c[-1] * x
    for k in range(c.numel() - 2, -1, -1):
        y = (y + c[k]) * x
    return y


def _coefficients(init: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(numerator, denominator) from a name of ``INITS`` or a pair of sequences; both need degree >= 1."""
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"unknown PAU init {init!r}; valid choices: {', '.join(sorted(INITS))}")
        return INITS[init]
    numerator, denominator = (tuple(float(v) for v in part) for part in init)
    if len(numerator) < 2 or len(denominator) < 1:
        raise ValueError("PAU init needs numerator a_0..a_m (m >= 1) and denominator b_1..b_n (n >= 1)")
    return numerator, denominator


def _pau_cost(channels: int, input_shape: Sequence[int], *, version: str = "A", init: Any = "leaky_relu") -> dict:
    """Per element: P by Horner (m mul, m add), Q by Horner (n mul, n add, the "+1" included), one abs
    (of x in A, of the sum in B) and one division (``other``); version A also takes |b| once (n ``other``)."""
    numerator, denominator = _coefficients(init)
    m, n, count = len(numerator) - 1, len(denominator), math.prod(input_shape)
    other = 2 * count + (n if version == "A" else 0)
    return {"params": m + 1 + n, "macs": 0,
            "elementwise": {"sigmoid": 0, "mul": (m + n) * count, "add": (m + n) * count, "mean": 0, "other": other}}


ACTIVATIONS.register("pau", PAU, complexity=_pau_cost,
                     help="PAU: learned rational P(x)/Q(x), degrees (5, 4), safe denominator Q >= 1, "
                          "one coefficient set per layer, LeakyReLU init")
