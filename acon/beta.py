"""Beta generators for meta-ACON: ``beta = G(x)`` at layer, channel or pixel granularity.

A generator is an ``nn.Module`` built from the channel count; its ``forward`` takes the
channels-first input ``x`` (N, C, ...) and returns a beta that broadcasts against ``x``.
Formulas: "Activate or Not" (CVPR 2021), section 3.3 and the official ``MetaAconC``.
The registry that builds meta-ACON from a generator name is ``acon.generators``.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from acon import _layout
from acon.registry import ConfigError

WIDTH_RULES = ("official", "plain")


def hidden_width(channels: int, r: int, width_rule: str = "official") -> int:
    """Hidden width of the channel-wise generator: ``max(r, C // r)`` or plain ``max(1, C // r)``.

    As in the official release, any integer r >= 1 suits any width (C = 8, r = 16: hidden 16).
    """
    check_reduction(r)
    r = int(r)
    if width_rule == "official":
        return max(r, channels // r)
    if width_rule == "plain":
        return max(1, channels // r)
    raise ValueError(f"unknown width_rule {width_rule!r}; valid choices: {', '.join(WIDTH_RULES)}")


def check_reduction(r: int) -> None:
    """Refuse a reduction ratio that is not an integer >= 1 (bools included)."""
    if not isinstance(r, numbers.Integral) or isinstance(r, bool):
        raise ConfigError(f"reduction ratio r must be an integer >= 1, got {r!r}")
    if r < 1:
        raise ConfigError(f"reduction ratio r={r} is out of range; allowed: integers >= 1")


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
