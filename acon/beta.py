"""Beta generators for meta-ACON: ``beta = G(x)`` at layer, channel or pixel granularity.

A generator is an ``nn.Module`` built from the channel count; its ``forward`` takes the
channels-first input ``x`` (N, C, ...) and returns a beta that broadcasts against ``x``.
Formulas: "Activate or Not" (CVPR 2021), section 3.3 and the official ``MetaAconC``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from acon import _layout
from acon.registry import Registry

WIDTH_RULES = ("official", "plain")

BETA_GENERATORS = Registry(
    "beta generator",
    doc="factory(channels, **options) -> nn.Module mapping channels-first x to a beta broadcastable "
    "against x. Options a factory may accept: r, width_rule, bn, bias (and its own).",
)


def hidden_width(channels: int, r: int, width_rule: str = "official") -> int:
    """Hidden width of the channel-wise generator: ``max(r, C // r)`` or plain ``max(1, C // r)``."""
    check_reduction(channels, r)
    if width_rule == "official":
        return max(r, channels // r)
    if width_rule == "plain":
        return max(1, channels // r)
    raise ValueError(f"unknown width_rule {width_rule!r}; valid choices: {', '.join(WIDTH_RULES)}")


def check_reduction(channels: int, r: int) -> None:
    """Refuse a reduction ratio below 1 (any r >= 1 fits any width, as in the official release)."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise ValueError(f"reduction ratio r must be an integer, got {r!r}")
    if r < 1:
        raise ValueError(f"reduction ratio r={r} is out of range for {channels} channels; allowed: r >= 1")


class ChannelBeta(nn.Module):
    """Channel-wise beta: ``sigmoid(bn2(fc2(bn1(fc1(mean_hw(x))))))``, one beta per sample and channel.

    Defaults match the official ``MetaAconC`` (hidden ``max(r, C // r)``, biases, BN).
    """

    def __init__(self, channels: int, r: int = 16, *, width_rule: str = "official", bn: bool = True, bias: bool = True):
        super().__init__()
        hidden = hidden_width(channels, r, width_rule)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(hidden) if bn else nn.Identity()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(channels) if bn else nn.Identity()

    def beta(self, x: Tensor) -> Tensor:
        """The generated beta, shape (N, C, 1, ...) to broadcast against ``x``."""
        pooled = _layout.spatial_mean(x)
        b = torch.sigmoid(self.bn2(_pointwise(self.fc2, self.bn1(_pointwise(self.fc1, pooled)))))
        return _layout.like_input(b, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.beta(x)


def _pointwise(conv: nn.Conv2d, z: Tensor) -> Tensor:
    """A 1x1 conv of an (N, C, 1, 1) tensor as a matrix product: same weights and result, but
    oneDNN's conv costs about ten times more than a GEMM at this size (it was a tenth of the
    channel-wise meta-ACON step on CPU)."""
    return torch.nn.functional.linear(z.flatten(1), conv.weight.flatten(1), conv.bias)[:, :, None, None]


class LayerBeta(nn.Module):
    """Layer-wise beta: ``sigmoid(sum_{c,h,w} x)``, one beta per sample (paper eq. for G layer-wise)."""

    def __init__(self, channels: int, *, reduce: str = "sum"):
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"unknown reduce {reduce!r}; valid choices: mean, sum")
        self.reduce = reduce

    def forward(self, x: Tensor) -> Tensor:
        s = _layout.sum_per_sample(x)
        if self.reduce == "mean":
            s = s / x[0].numel()
        return torch.sigmoid(s)


class PixelBeta(nn.Module):
    """Pixel-wise beta: ``sigmoid(x_{c,h,w})``, one beta per element."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


BETA_GENERATORS.register("channel", ChannelBeta, help="one beta per sample and channel (official MetaAconC; r, width_rule, bn, bias)")
BETA_GENERATORS.register("layer", LayerBeta, help="one beta per sample and layer: sigmoid(sum of x)")
BETA_GENERATORS.register("pixel", PixelBeta, help="one beta per element: sigmoid(x)")


class LearnedBeta(nn.Module):
    """A learned per-channel beta (ACON-C's): not generated from the input."""

    def __init__(self, channels: int, *, init: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return _layout.per_channel(self.beta, x)


class FixedBeta(nn.Module):
    """A constant beta given by the user (``beta=...``), kept as a buffer, never trained."""

    def __init__(self, channels: int, *, beta: float = 1.0):
        super().__init__()
        self.register_buffer("beta", torch.full((1, channels, 1, 1), float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        return _layout.per_channel(self.beta, x)


BETA_GENERATORS.register("learned", LearnedBeta, help="a learned per-channel beta, not input-dependent (ACON-C)")
BETA_GENERATORS.register("fixed", FixedBeta, help="a constant beta you give (beta=...)")
