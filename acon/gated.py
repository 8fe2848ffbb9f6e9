"""A parameter-matched control for meta-ACON: keep the model's activation, gate it with a squeeze-excite branch.

``y = act(x) * sigmoid(bn2(fc2(bn1(fc1(mean_hw(x))))))``: the gate is the channel-wise beta generator
of ``MetaAconC`` (same r, hidden width ``max(r, C // r)``, biases and BN), so the control has the
same extra parameters as channel-wise meta-ACON less its 2C (p1, p2). If meta-ACON beats it, the
gain is more than the parameters and the input-conditioned branch it adds.
"""
from __future__ import annotations

import copy
from torch import Tensor, nn

from acon import _layout
from acon._activation_registry import ACTIVATIONS
from acon.beta import ChannelBeta


class GatedActivation(nn.Module):
    """``act(x) * gate(x)`` with a channel-wise squeeze-excite gate laid out like ``MetaAconC``'s generator.

    ``act`` is the activation the control keeps (default ReLU); keys ``act.*`` and ``gate.fc1, gate.bn1,
    gate.fc2, gate.bn2``.
    """

    def __init__(self, channels: int, r: int = 16, *, act: nn.Module | None = None, channel_dim: int = 1,
                 width_rule: str = "official", bn: bool = True, bias: bool = True):
        super().__init__()
        self.channels, self.channel_dim, self.r = channels, channel_dim, r
        self.act = act if act is not None else nn.ReLU()
        self.gate = ChannelBeta(channels, r, width_rule=width_rule, bn=bn, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        xc = _layout.channels_first(x, self.channel_dim, self.channels)
        y = self.act(xc) * self.gate(xc)
        return _layout.restore_channels(y, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{self.channels}, r={self.r}"


def own_copy(original: nn.Module | None) -> nn.Module | None:
    """A private, out-of-place copy of the replaced activation: one module may serve several call sites,
    and an in-place one would overwrite the input the gate reads."""
    if original is None:
        return None
    act = copy.deepcopy(original)
    if getattr(act, "inplace", False):
        act.inplace = False
    return act


@ACTIVATIONS.register("se_control", help="control: the model's own activation times a squeeze-excite gate with "
                                         "channel-wise meta-ACON's generator layout (same r, params less 2C)")
def _se_control(channels: int, *, r: int = 16, original: nn.Module | None = None, channel_dim: int = 1,
                width_rule: str = "official", bn: bool = True, bias: bool = True) -> nn.Module:
    return GatedActivation(channels, r, act=own_copy(original), channel_dim=channel_dim, width_rule=width_rule,
                           bn=bn, bias=bias)
