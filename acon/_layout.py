"""Shape helpers shared by the ACON modules.

They are wrapped for ``torch.fx`` so that modules using them trace symbolically: the
helpers read ``x.ndim`` and ``x.shape``, which a symbolic trace cannot branch on.
"""
from __future__ import annotations

import math

import torch
import torch.fx
from torch import Tensor


@torch.fx.wrap
def channels_first(x: Tensor, channel_dim: int, channels: int) -> Tensor:
    """Check ``x``'s channel count and return a view with the channel axis at dim 1."""
    if x.ndim < 2:
        raise ValueError(f"expected an input with a batch and a channel axis, got shape {tuple(x.shape)}")
    dim = channel_dim % x.ndim
    if dim == 0:
        raise ValueError("channel_dim cannot be the batch axis (0)")
    if x.shape[dim] != channels:
        raise ValueError(
            f"input has {x.shape[dim]} channels on axis {channel_dim}, but the module was built for {channels}"
        )
    return x if dim == 1 else x.movedim(dim, 1)


@torch.fx.wrap
def restore_channels(y: Tensor, channel_dim: int) -> Tensor:
    """Undo ``channels_first``: move axis 1 back to ``channel_dim``."""
    dim = channel_dim % y.ndim
    return y if dim == 1 else y.movedim(1, dim)


@torch.fx.wrap
def per_channel(p: Tensor, x: Tensor) -> Tensor:
    """View a ``(1, C, 1, 1)`` parameter so it broadcasts against channels-first ``x``."""
    if p.ndim == x.ndim:
        return p
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


@torch.fx.wrap
def spatial_mean(x: Tensor) -> Tensor:
    """Mean over every axis after the channel axis, as ``(N, C, 1, 1)``."""
    if x.ndim > 2:
        # sum * (1/n), not mean: mean's backward divides a broadcast gradient, slower than the whole fused ACON op
        x = x.sum(dim=tuple(range(2, x.ndim))) * (1.0 / math.prod(x.shape[2:]))
    return x.reshape(x.shape[0], x.shape[1], 1, 1)


@torch.fx.wrap
def like_input(beta: Tensor, x: Tensor) -> Tensor:
    """Reshape an ``(N, C', 1, 1)`` beta to broadcast against channels-first ``x``."""
    return beta.reshape(beta.shape[:2] + (1,) * (x.ndim - 2))


@torch.fx.wrap
def sum_per_sample(x: Tensor) -> Tensor:
    """Sum over every non-batch axis, shaped to broadcast against ``x``."""
    s = x.reshape(x.shape[0], -1).sum(dim=1)
    return s.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
