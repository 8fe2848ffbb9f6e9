"""ACON activation modules: ACON-A/B/C and meta-ACON, built from the channel count.

Parameters are per channel with the official shapes ``(1, C, 1, 1)`` and initialisation
(p1, p2 ~ randn, beta = 1). ``channel_dim`` says which axis holds the channels, so the
same module serves (N, C, H, W), (N, C) and (N, L, C) inputs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from acon import _layout
from acon import functional as F
from acon.beta import ChannelBeta

Init = Callable[[Tensor], object]


def _param(channels: int, init: float | Init | None, default: Callable[..., Tensor]) -> nn.Parameter:
    """A ``(1, C, 1, 1)`` parameter: ``init`` is a number, an in-place init function, or None (default)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if init is None:
        return nn.Parameter(default(1, channels, 1, 1))
    if callable(init):
        p = torch.empty(1, channels, 1, 1)
        out = init(p)
        # nn.init.*_ fill p in place and return it; a function returning a new tensor is honoured too,
        # otherwise p would silently stay uninitialised memory.
        if isinstance(out, Tensor) and out is not p:
            if out.numel() != channels:
                raise ValueError(f"init function returned {out.numel()} values for {channels} channels")
            p = out.detach().reshape(1, channels, 1, 1).to(p.dtype, copy=True)
        return nn.Parameter(p)
    return nn.Parameter(torch.full((1, channels, 1, 1), float(init)))


class _ChannelActivation(nn.Module):
    """Shared plumbing: channel count, channel axis, channels-first views."""

    def __init__(self, channels: int, channel_dim: int):
        super().__init__()
        self.channels = channels
        self.channel_dim = channel_dim

    def extra_repr(self) -> str:
        dim = "" if self.channel_dim == 1 else f", channel_dim={self.channel_dim}"
        return f"{self.channels}{dim}"


class AconA(_ChannelActivation):
    """ACON-A: ``x * sigmoid(beta x)`` with a learned per-channel beta (Swish when beta = 1)."""

    def __init__(self, channels: int, *, channel_dim: int = 1, beta: float | Init | None = None):
        super().__init__(channels, channel_dim)
        self.beta = _param(channels, beta, torch.ones)

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        y = F.acon_a(xc, _layout.per_channel(self.beta, xc))
        return _layout.restore_channels(y, self.channel_dim)


class AconB(_ChannelActivation):
    """ACON-B: ``(1 - p) x * sigmoid(beta (1 - p) x) + p x`` with learned p and beta."""

    def __init__(self, channels: int, *, channel_dim: int = 1, p: float | Init | None = None, beta: float | Init | None = None):
        super().__init__(channels, channel_dim)
        self.p = _param(channels, p, torch.randn)
        self.beta = _param(channels, beta, torch.ones)

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        y = F.acon_b(xc, _layout.per_channel(self.p, xc), _layout.per_channel(self.beta, xc))
        return _layout.restore_channels(y, self.channel_dim)


class AconC(_ChannelActivation):
    """ACON-C: ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x``; state_dict keys ``p1, p2, beta``.

    ``learn_beta=False`` keeps beta as a fixed buffer (the ``fixed`` beta generator);
    ``gate="hard_sigmoid"`` swaps the sigmoid for the cheaper hard sigmoid.
    """

    def __init__(
        self,
        channels: int,
        *,
        channel_dim: int = 1,
        p1: float | Init | None = None,
        p2: float | Init | None = None,
        beta: float | Init | None = None,
        learn_beta: bool = True,
        gate: str = "sigmoid",
    ):
        super().__init__(channels, channel_dim)
        self.gate = F.check_gate(gate)
        self.p1 = _param(channels, p1, torch.randn)
        self.p2 = _param(channels, p2, torch.randn)
        b = _param(channels, beta, torch.ones)
        if learn_beta:
            self.beta = b
        else:
            self.register_buffer("beta", b.detach())

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        p1, p2 = _layout.per_channel(self.p1, xc), _layout.per_channel(self.p2, xc)
        y = F.acon_c(xc, p1, p2, _layout.per_channel(self.beta, xc), self.gate)
        return _layout.restore_channels(y, self.channel_dim)


class _MetaAconForward:
    """meta-ACON's forward, shared by ``MetaAcon`` and ``MetaAconC``: ACON-C whose beta comes from the hook
    ``_generate_beta(xc)`` (xc channels first). Needs ``channels, channel_dim, p1, p2, gate``; no state of its own."""

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        p1, p2 = _layout.per_channel(self.p1, xc), _layout.per_channel(self.p2, xc)
        y = F.meta_acon(xc, p1, p2, self._generate_beta(xc), self.gate)
        return _layout.restore_channels(y, self.channel_dim)

    def _generate_beta(self, xc: Tensor) -> Tensor:
        raise NotImplementedError


class MetaAcon(_MetaAconForward, _ChannelActivation):
    """meta-ACON with any beta generator: ACON-C whose beta is ``generator(x)``.

    Keys: ``p1, p2, generator.*``. For the official channel-wise layout use ``MetaAconC``.
    """

    def __init__(self, channels: int, generator: nn.Module, *, channel_dim: int = 1, p1: float | Init | None = None, p2: float | Init | None = None,
                 gate: str = "sigmoid"):
        super().__init__(channels, channel_dim)
        self.gate = F.check_gate(gate)
        self.generator = generator
        self.p1 = _param(channels, p1, torch.randn)
        self.p2 = _param(channels, p2, torch.randn)

    def _generate_beta(self, xc: Tensor) -> Tensor:
        return self.generator(xc)


class MetaAconC(_MetaAconForward, ChannelBeta):
    """Channel-wise meta-ACON with the official module's layout and defaults.

    Keys ``fc1, bn1, fc2, bn2, p1, p2``; hidden width ``max(r, C // r)``, biases and BN on,
    so an official checkpoint loads with ``strict=True``. ``width_rule="plain"``, ``bn=False``
    and ``bias=False`` are the non-official switches.
    """

    def __init__(
        self,
        channels: int,
        r: int = 16,
        *,
        channel_dim: int = 1,
        width_rule: str = "official",
        bn: bool = True,
        bias: bool = True,
        p1: float | Init | None = None,
        p2: float | Init | None = None,
        gate: str = "sigmoid",
    ):
        super().__init__(channels, r, width_rule=width_rule, bn=bn, bias=bias)
        self.gate = F.check_gate(gate)
        self.channels, self.channel_dim, self.r = channels, channel_dim, r
        self.p1 = _param(channels, p1, torch.randn)
        self.p2 = _param(channels, p2, torch.randn)

    def _generate_beta(self, xc: Tensor) -> Tensor:
        return self.beta(xc)  # ChannelBeta's generator, whose layers are this module's own

    def extra_repr(self) -> str:
        return f"{self.channels}, r={self.r}" + ("" if self.gate == "sigmoid" else f", gate={self.gate}")
