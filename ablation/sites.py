"""Activation call sites of a model: the ``Site`` record, the ``Sites`` a surgery changed, one-line descriptions of
them, and the stage rule (``assign_stages``).

A site is one CALL of the model's own activation (ReLU, GELU, SiLU, ... as a module, a function
or a tensor method), not a module instance: torchvision's ResNet blocks call one ``self.relu``
several times (at two widths in Bottleneck), and each call is its own site. Gates (an
activation whose output scales another tensor, as in squeeze-excite) are never sites.

Where they are found: ``ablation.site_kinds`` (which activations count), ``ablation.site_tracing`` (torch.fx trace
and shapes), ``ablation.site_calls`` (calls counted at run time), ``ablation.site_finder`` (the search on a graph).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from ablation.site_calls import Call, activation_calls
from ablation.site_kinds import SITE_KINDS
from ablation.site_tracing import propagate_shapes

# SITE_KINDS, activation_calls and propagate_shapes live where sites are found; they stay importable from here,
# where callers have long found them.
__all__ = ["SITE_KINDS", "Call", "Site", "Sites", "activation_calls", "assign_stages", "describe_replaced",
           "propagate_shapes", "unreplaced_summary"]

_STAGE_NAME = re.compile(r"^(layer|stage|denseblock|block)(\d+)$")


@dataclass(frozen=True)
class Site:
    """One activation call site.

    ``index``: position among all candidate sites in execution order; ``path``: module path of the
    original call, ``#k`` (1-based) when that module is called several times; ``width``: channels
    (the output's size on ``channel_dim``: 1, or the last dim after a Linear/LayerNorm);
    ``spatial``: the output's other non-batch dims; ``stage``: see ``assign_stages``; ``target``:
    module path of the activation in the changed model; ``source``: what produced the input
    (module path or op name); ``block``/``block_type``: the enclosing module and its class;
    ``replaced``: the ``SITE_KINDS`` name of the activation the site had.
    """

    index: int
    path: str
    width: int
    spatial: tuple[int, ...]
    stage: int
    target: str
    source: str = ""
    block: str = ""
    block_type: str = ""
    inplace: bool = False
    replaced: str = ""
    channel_dim: int = 1

    def as_row(self) -> list:
        """A JSON-friendly row: index, path, width, spatial, stage, target, replaced."""
        return [self.index, self.path, self.width, list(self.spatial), self.stage, self.target, self.replaced]


def describe_replaced(sites: Sequence[Site]) -> str:
    """The kinds ``sites`` replaced, most common first: ``"relu x16"``, ``"gelu x12, silu x3"``."""
    counts = Counter(s.replaced for s in sites)
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class Sites(list):
    """The sites a surgery changed (a list of ``Site``), and ``unreplaced``: the activation calls of the model that
    are no site (``unreplaced_calls``), so a caller can say so."""

    def __init__(self, sites: Iterable[Site] = (), unreplaced: Iterable[Call] = ()) -> None:
        super().__init__(sites)
        self.unreplaced = tuple(unreplaced)


def unreplaced_summary(sites: Sequence[Site]) -> str:
    """One line on the activation calls ``sites`` left unreplaced, and where; "" when none (or unknown)."""
    left = getattr(sites, "unreplaced", ())
    if not left:
        return ""
    where = Counter((c.path, c.kind, "module" if c.module else "function") for c in left)
    shown = [f"{path or '(root)'} {kind} {how}" + (f" x{k}" if k > 1 else "") for (path, kind, how), k in where.items()]
    more = f", ... ({len(shown) - 6} more places)" if len(shown) > 6 else ""
    return (f"{len(left)} activation call(s) left unreplaced (inside blocks torch.fx cannot enter): "
            f"{', '.join(shown[:6])}{more}")


def assign_stages(paths: Sequence[str], spatials: Sequence[tuple[int, ...]]) -> list[int]:
    """Stage of each site, in execution order.

    Named rule, when some path has a component ``layerN``/``stageN``/``blockN``/``denseblockN``
    (ResNet layer1..4, ShuffleNetV2 stage2..4, RegNet block1..4, DenseNet denseblock1..4): the stage
    is N of the latest such component seen; sites before the first (the stem) are stage 0, and
    sites after one (transitions, heads) stay in it. Otherwise, resolution rule: a stage is a
    maximal run of sites with the same spatial size, numbered from 1; pooled sites (no spatial
    dims, or all ones: SE gates, classifier MLPs) stay in the current stage.
    """
    named = [_named_stage(p) for p in paths]
    if any(s is not None for s in named):
        return _running(named)
    stages, current, last = [], 0, None
    for sp in spatials:
        pooled = all(d == 1 for d in sp)
        if not pooled and sp != last:
            current, last = current + 1, sp
        stages.append(max(current, 1))
    return stages


def _named_stage(path: str) -> int | None:
    for part in path.split("#")[0].split("."):
        m = _STAGE_NAME.match(part)
        if m:
            return int(m.group(2))
    return None


def _running(named: list[int | None]) -> list[int]:
    out, current = [], 0
    for s in named:
        current = s if s is not None else current
        out.append(current)
    return out
