"""FReLU: ``y = max(x, T(x))``, T a depthwise k x k convolution + BatchNorm (a per-channel spatial condition).

Ma, Zhang, Sun, "Funnel Activation for Visual Recognition", ECCV 2020 (arXiv 2007.11824); official code in
MegEngine: megvii-model/FunnelAct and MegEngine/Models ``official/vision/classification/frelu/resnet/frelu.py``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from acon import _layout
from acon._activation_registry import ACTIVATIONS


class FReLU(nn.Module):
    """Funnel ReLU: ``max(x, bn_frelu(conv_frelu(x)))``, the conv depthwise k x k, stride 1, padding k // 2.

    As the official MegEngine ``FReLU``: the conv has a bias (MegEngine's default; the paper writes T as the
    depthwise conv and BN and does not mention it), BN after it, no other parameters, and keys ``conv_frelu.*``,
    ``bn_frelu.*``. ``kernel_size`` is the paper's funnel window (3 by default; the paper ablates the window
    size); odd sizes keep the spatial size. The official light-weight variant (ShuffleNetV2: 1x3 and 3x1 convs,
    each with BN) is not this module. ``bn=False`` drops the BN (the batch-size-1 rule of the meta-ACON
    generators: a batch of one with a single position cannot train BN).

    Needs a spatial grid: ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``channel_dim=3``/``-1``; tokens
    (N x L x C) have no grid for the k x k window and are refused. A fully connected layer's ``(N, C)`` (an MLP
    head's activation, as in ``tiny_cnn``) is read as a 1 x 1 grid, where the zero-padded window keeps its
    centre tap: ``max(x, BN(w x + b))`` per channel. The official code never meets one (it replaces the ReLUs
    of conv layers); this reading keeps ``placement="all"`` usable on such models.
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, bn: bool = True, channel_dim: int = 1):
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"FReLU's kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        if channel_dim == 2:  # a channels-last site whose channel axis is 2 is (N, L, C): tokens
            raise ValueError(_TOKENS)
        self.channels, self.kernel_size, self.channel_dim = channels, kernel_size, channel_dim
        self.conv_frelu = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels)
        self.bn_frelu = nn.BatchNorm2d(channels) if bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        xc = _grid(x, self.channel_dim, self.channels)
        return _restore(torch.maximum(xc, self.bn_frelu(self.conv_frelu(xc))), x, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


_TOKENS = "FReLU needs a spatial grid (N, C, H, W) for its k x k window; token inputs (N, L, C) have none"


@torch.fx.wrap
def _grid(x: Tensor, channel_dim: int, channels: int) -> Tensor:
    """``x`` channels-first, an ``(N, C)`` as a 1 x 1 grid, refusing tokens (one spatial axis)."""
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim != 4:
        raise ValueError(f"{_TOKENS}; got shape {tuple(x.shape)}")
    return _layout.channels_first(x, channel_dim, channels)


@torch.fx.wrap
def _restore(y: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    """``y`` back in ``x``'s layout: an ``(N, C)`` input's 1 x 1 grid flattened, else its channel axis restored."""
    return y.flatten(1) if x.ndim == 2 else _layout.restore_channels(y, channel_dim)


def frelu_complexity(channels: int, input_shape: tuple[int, ...], *, kernel_size: int = 3, bn: bool = True,
                     **_: Any) -> dict:
    """Params, MACs and elementwise ops of one FReLU on a channels-first ``(N, C, H, W)`` input (n = N C H W), as
    ``ablation.complexity.count`` counts them: params ``C k^2 + C`` (conv weight and bias) ``+ 2C`` (BN);
    MACs ``n k^2`` (depthwise: one k x k window per output element; the bias add is inside); eval-mode BN
    ``mul`` n and ``add`` n; the maximum ``other`` n."""
    if len(input_shape) not in (2, 4):  # (N, C): a 1 x 1 grid
        raise ValueError(f"{_TOKENS}; got shape {tuple(input_shape)}")
    n = math.prod(input_shape)
    return {"params": channels * kernel_size ** 2 + channels + (2 * channels if bn else 0),
            "macs": n * kernel_size ** 2,
            "elementwise": {"sigmoid": 0, "mul": n if bn else 0, "add": n if bn else 0, "mean": 0, "other": n}}


@ACTIVATIONS.register("frelu", complexity=frelu_complexity,
                      help="FReLU (Ma et al., ECCV 2020): max(x, BN(depthwise k x k conv(x))), k = kernel_size, "
                           "needs a spatial grid")
def _frelu(channels: int, *, kernel_size: int = 3, bn: bool = True, channel_dim: int = 1) -> nn.Module:
    return FReLU(channels, kernel_size, bn=bn, channel_dim=channel_dim)
