"""Where a site's channels are: the axis rule (channels last after a Linear or LayerNorm, as in ViT, Swin and
ConvNeXt MLPs on (N, ..., C); at dim 1 after a conv or norm), and a site's width and spatial dims on that axis.

The graph search (``ablation.site_finder``) and the run-time counter (``ablation.site_calls``) walk back to the
call that decides the axis, each on its own record of the computation; the rule is here, once.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import nn

#: Calls that decide which axis holds the channels: (modules, functions) with features last, or at dim 1.
_LAST_AXIS = ((nn.Linear, nn.LayerNorm), (F.linear, F.layer_norm))
_AXIS_ONE = ((nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm), (F.conv1d, F.conv2d, F.conv3d, F.batch_norm))


def axis_after(op: Any, ndim: int) -> int | None:
    """The channel axis of an output of ``op`` (a module or function), or None if ``op`` does not decide it."""
    if _is_layer_norm_2d(op) or _is_call_of(op, _AXIS_ONE):
        return 1
    if _is_call_of(op, _LAST_AXIS):
        return max(ndim - 1, 1)
    return None


def _is_call_of(op: Any, calls: tuple[tuple[type, ...], tuple[Any, ...]]) -> bool:
    modules, functions = calls
    return isinstance(op, modules) or any(op is f for f in functions)


def _is_layer_norm_2d(op: Any) -> bool:
    # torchvision's ConvNeXt LayerNorm2d subclasses nn.LayerNorm but normalises channels at dim 1.
    return isinstance(op, nn.LayerNorm) and type(op).__name__ == "LayerNorm2d"


def spatial_dims(shape: Sequence[int], channel_dim: int = 1) -> tuple[int, ...]:
    """The output's dims other than batch and channels."""
    return tuple(int(s) for i, s in enumerate(shape) if i not in (0, channel_dim))


def site_width(shape: Sequence[int], path: str, channel_dim: int = 1) -> int:
    """The channels of a site's output of ``shape``; a ValueError for an output without a channel axis."""
    if len(shape) < 2:
        raise ValueError(f"site {path} has output shape {tuple(shape)}: an activation site needs (N, C, ...)")
    return int(shape[channel_dim])
