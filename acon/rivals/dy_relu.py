"""DY-ReLU A, B and C: ``y = max_k (a^k(x) x + b^k(x))`` with slopes and intercepts predicted from the input.

Chen, Dai, Liu, Chen, Yuan, Liu, "Dynamic ReLU", ECCV 2020 (arXiv 2003.10027). The authors never released
DY-ReLU itself; the nearest authors' code is ``DYReLU`` in microsoft/DynamicHead (``dyhead/dyrelu.py``,
Oct 2021, channel-wise with an optional spatial branch), which this module follows where the paper is silent.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from acon import _layout
from acon._activation_registry import ACTIVATIONS
from acon.beta import check_reduction

VARIANTS = ("A", "B", "C")
GATES = ("sigmoid", "hard_sigmoid")


def dy_relu_hidden(channels: int, r: int) -> int:
    """Hidden width of the hyper-function: ``C // r`` (DynamicHead's rule for r = 4), at least 1."""
    check_reduction(r)
    return max(1, channels // int(r))


class DyReLU(nn.Module):
    """Dynamic ReLU, variant A (one piecewise-linear function per sample), B (per sample and channel) or C (B
    times a spatial attention).

    Hyper-function (paper section 3.2, DynamicHead ``DYReLU.fc``): mean over positions -> ``fc1`` (C -> C // r) ->
    ReLU -> ``fc2`` (-> 2K coefficients per channel; A: 2K in all) -> ``2 gate(z) - 1``, a residual in [-1, 1];
    ``a^k = alpha^k + lambda_a res``, ``b^k = beta^k + lambda_b res`` with ``alpha = (1, 0, ...)``, ``beta = 0``,
    ``lambda_a = 1``, ``lambda_b = 0.5`` (paper; the same in DynamicHead). ``fc2``'s outputs are ordered
    ``a^1, b^1, a^2, b^2, ...`` (each C wide) as in DynamicHead. The residual is computed as
    ``gate(z) * 2 lambda + (init - lambda)``: the same numbers with one mul and one add.

    Where paper and code disagree: the paper normalises with the sigmoid, DynamicHead with the hard sigmoid
    ``relu6(z + 3) / 6``; ``gate="sigmoid"`` (default, the paper's, since DY-ReLU's own code was never released)
    or ``"hard_sigmoid"`` (DynamicHead's). K: the paper's K (default 2, its choice); DynamicHead has K = 2 only.
    r = 4 as in DynamicHead and the common ports (DynamicHead rounds C // r to a multiple of 4 when r != 4;
    here it is plain ``C // r``, at least 1).

    C's spatial attention (DynamicHead ``DYReLU.spa``): a 1x1 conv C -> 1 with bias, BatchNorm over that one
    channel, softmax over the positions, ``pi = min(S * softmax / 3, 1)`` (S positions; the code's
    ``hardtanh(S softmax, 0, 3) / 3``), and ``y = pi * max_k(...)``, which equals scaling both a^k and b^k by pi
    (pi >= 0). The code's softmax has no temperature, the paper's (as we recall it; its value not checked here)
    has one: ``temperature`` divides the logits (default 1, the code's). ``bn=False`` drops the spatial BN (batch
    size 1 with a single position); A and B have no BN, so they train on a batch of one.

    pi averages 1/3 (less where it clamps; exactly 1/3 with one position), so C shrinks its output about 3-fold by
    design (the code's ``/ 3``; the paper's gamma = HW / 3 as we recall it). A BN after the next conv undoes that;
    nothing does before a classifier. In ``tiny_cnn`` with C at all four sites (three conv-BN blocks, then pool ->
    Linear -> C on (N, C) -> Linear) the logits start ~9 times smaller, and a short schedule does not recover: the
    ``dynamic`` study's quick preset gave C 49.0 +- 11.5 % (A 94.9, B 93.0, ReLU 90.1; 3 seeds). The same model on
    synthetic 16 x 16 shifted patterns (10 classes, 300 SGD steps at the quick preset's lr, momentum and weight
    decay; validation accuracy, mean +- sd over 3 seeds): ReLU 88.0 +- 3.4, A 92.6 +- 1.4, B 90.6 +- 2.3, C 34.2 +-
    3.2; C with ``temperature=10`` 41.0 +- 2.1, with ``bn=False`` 31.7 +- 8.8; C at the conv sites only 65.7 +- 5.2,
    at the head only 78.2 +- 0.6; C with pi times 3 (mean 1) 86.4 +- 2.1, and B times a constant 1/3 37.3 +- 1.7.
    So the attention's mean, not its spread (the temperature), its BN or a bug, is what costs C there; we keep the
    sources' 1/3 and temperature 1.

    Layouts: the input is ``(N, C, *positions)``, or channels at ``channel_dim``; positions may be a grid or
    tokens (N x L x C pools over L), or none (N x C: C's softmax is then over one position, pi = 1/3 as in the
    code).
    """

    def __init__(self, channels: int, variant: str = "B", *, k: int = 2, r: int = 4, lambda_a: float = 1.0,
                 lambda_b: float = 0.5, gate: str = "sigmoid", temperature: float = 1.0, bn: bool = True,
                 channel_dim: int = 1):
        super().__init__()
        _check(variant, k, gate, temperature)
        self.channels, self.variant, self.k, self.r, self.channel_dim = channels, variant, int(k), r, channel_dim
        self.gate = gate
        self.width = 1 if variant == "A" else channels  # coefficients per piece
        hidden = dy_relu_hidden(channels, r)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2 * self.k * self.width)
        lam = torch.tensor([lambda_a, lambda_b]).repeat(self.k)  # (2K,): a^1, b^1, a^2, b^2 ...
        init = torch.zeros(2 * self.k)
        init[0] = 1.0  # alpha^1 = 1: DY-ReLU starts near ReLU
        self.register_buffer("slope", (2 * lam)[:, None].expand(-1, self.width).reshape(-1), persistent=False)
        self.register_buffer("offset", (init - lam)[:, None].expand(-1, self.width).reshape(-1), persistent=False)
        self.spa = None
        if variant == "C":
            self.spa = nn.Sequential(nn.Conv2d(channels, 1, kernel_size=1), nn.BatchNorm2d(1) if bn else nn.Identity())
        self.inv_temperature = None if temperature == 1 else 1.0 / temperature

    def coefficients(self, xc: Tensor) -> Tensor:
        """The predicted ``(N, K, 2, C')`` slopes (``[:, k, 0]``) and intercepts (``[:, k, 1]``); C' = 1 for A."""
        pooled = _layout.spatial_mean(xc).flatten(1)
        z = self.fc2(torch.relu(self.fc1(pooled)))
        g = torch.sigmoid(z) if self.gate == "sigmoid" else torch.nn.functional.hardsigmoid(z)
        return (g * self.slope + self.offset).reshape(-1, self.k, 2, self.width)

    def attention(self, xc: Tensor) -> Tensor:
        """C's spatial attention ``min(S softmax(z) / 3, 1)``, shaped to broadcast against ``xc``."""
        z = self.spa(_positions(xc)).flatten(1)  # (N, S)
        if self.inv_temperature is not None:
            z = z * self.inv_temperature
        return _over_positions(torch.clamp(torch.softmax(z, dim=1) * (z.shape[1] / 3.0), 0.0, 1.0), xc)

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        theta = self.coefficients(xc)
        y = None
        for k in range(self.k):  # K is fixed at construction: a static loop, compile-friendly
            piece = xc * _layout.like_input(theta[:, k, 0, :, None, None], xc) \
                + _layout.like_input(theta[:, k, 1, :, None, None], xc)
            y = piece if y is None else torch.maximum(y, piece)
        if self.spa is not None:
            y = y * self.attention(xc)
        return _layout.restore_channels(y, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{self.channels}, variant={self.variant!r}, k={self.k}, r={self.r}"


def _check(variant: str, k: int, gate: str, temperature: float) -> None:
    """Refuse an unknown variant or gate, K < 1, or a temperature <= 0."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DY-ReLU variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"DY-ReLU's k (linear pieces) must be an integer >= 1, got {k!r}")
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid choices: {', '.join(GATES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


@torch.fx.wrap
def _positions(x: Tensor) -> Tensor:
    """``(N, C, *positions)`` as ``(N, C, S, 1)`` for the 1x1 conv of the spatial branch."""
    return x.reshape(x.shape[0], x.shape[1], -1, 1)


@torch.fx.wrap
def _over_positions(p: Tensor, x: Tensor) -> Tensor:
    """An ``(N, S)`` attention shaped ``(N, 1, *positions)`` to broadcast against ``x``."""
    return p.reshape((x.shape[0], 1) + tuple(x.shape[2:]))


# ---- analytic cost ------------------------------------------------------------------------------

def dy_relu_complexity(variant: str, channels: int, input_shape: tuple[int, ...], *, k: int = 2, r: int = 4,
                       gate: str = "sigmoid", temperature: float = 1.0, bn: bool = True, **_: Any) -> dict:
    """Params, MACs and elementwise ops of one DY-ReLU on a channels-first ``(N, C, *positions)`` input, counted as
    ``ablation.complexity.count`` counts them (n = N C S elements, S positions, h = C // r, W = 2K C' outputs of
    ``fc2``, C' = 1 for A, else C):

    - params ``C h + h + h W + W``; C adds ``C + 1`` (1x1 conv with bias) and 2 (its BN) with ``bn``.
    - MACs ``N C h + N h W`` (the two FCs; bias adds are inside); C adds ``N S C`` (the 1x1 conv).
    - pool (only with positions axes): ``mean`` n (the sum) and ``mul`` N C (times 1/S); ``other`` N h (ReLU);
      gate: ``sigmoid`` N W, or for the hard sigmoid ``other`` N W; residual ``mul`` N W, ``add`` N W;
      pieces ``mul`` K n, ``add`` K n, ``other`` (K - 1) n (the maxima).
    - C: BN ``mul`` N S, ``add`` N S; temperature != 1 ``mul`` N S; softmax ``other`` N S; ``mul`` N S (times S/3);
      clamp ``other`` N S; ``mul`` n (y times pi).
    """
    n_batch, positions = input_shape[0], math.prod(input_shape[2:])
    n, hidden = math.prod(input_shape), dy_relu_hidden(channels, r)
    out = 2 * k * (1 if variant == "A" else channels)
    pooled = len(input_shape) > 2
    ew = {"sigmoid": n_batch * out if gate == "sigmoid" else 0,
          "mul": (n_batch * channels if pooled else 0) + n_batch * out + k * n,
          "add": n_batch * out + k * n,
          "mean": n if pooled else 0,
          "other": n_batch * hidden + (0 if gate == "sigmoid" else n_batch * out) + (k - 1) * n}
    params, macs = channels * hidden + hidden + hidden * out + out, n_batch * channels * hidden + n_batch * hidden * out
    if variant == "C":
        rows = n_batch * positions
        params += channels + 1 + (2 if bn else 0)
        macs += rows * channels
        ew["mul"] += rows * (int(bn) + int(temperature != 1) + 1) + n
        ew["add"] += rows * int(bn)
        ew["other"] += 2 * rows
    return {"params": params, "macs": macs, "elementwise": ew}


def _register(variant: str, what: str) -> None:
    name = f"dy_relu_{variant.lower()}"

    def factory(channels: int, *, k: int = 2, r: int = 4, lambda_a: float = 1.0, lambda_b: float = 0.5,
                gate: str = "sigmoid", temperature: float = 1.0, bn: bool = True, channel_dim: int = 1) -> nn.Module:
        return DyReLU(channels, variant, k=k, r=r, lambda_a=lambda_a, lambda_b=lambda_b, gate=gate,
                      temperature=temperature, bn=bn, channel_dim=channel_dim)

    def cost(channels: int, input_shape: tuple[int, ...], **options: Any) -> dict:
        return dy_relu_complexity(variant, channels, input_shape, **options)

    factory.__name__ = factory.__qualname__ = f"_{name}"
    spatial = ("temperature", "bn") if variant == "C" else ()
    options = frozenset(("k", "r", "lambda_a", "lambda_b", "gate", "channel_dim") + spatial)
    ACTIVATIONS.register(name, factory, options=options, complexity=cost,
                         help=f"DY-ReLU-{variant} (Chen et al., ECCV 2020): max of k linear pieces predicted from "
                              f"the input, {what}; gate sigmoid (paper) or hard_sigmoid (DynamicHead)")


_register("A", "one set per sample")
_register("B", "one set per channel")
_register("C", "per channel times a spatial attention (mean at most 1/3)")
