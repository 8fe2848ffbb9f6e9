"""The overhead table: params and FLOPs of meta-ACON variants against the ReLU model, no training.

Models are built on the ``meta`` device by default (shapes only), so ResNet-50 at 224 costs
no arithmetic. FLOPs follow ``ablation.complexity.FLOP_CONVENTION`` (1 multiply-add = 1 FLOP,
elementwise ops counted separately and named as such).
"""
from __future__ import annotations

import itertools

import pandas as pd
import torch

from ablation import complexity

# Options only some generators use; a cell where they do not apply shows "-".
_USES_R = {"channel"}


def _default_builder():
    """``ablation.build_model``, imported late: it lives in another engineer's module."""
    import ablation

    return ablation.build_model


def overhead_table(models, generators, rs, placements, *, input_size=None, activation="meta_acon",
                   num_classes: int = 1000, in_channels: int = 3, builder=None, device="meta") -> pd.DataFrame:
    """One row per (model, generator, r, placement): params and FLOPs against the ReLU model.

    ``input_size`` None means ImageNet (224, ``small_input=False``); a size under 64 builds the
    small-input (CIFAR-style) stem. ``builder`` defaults to ``ablation.build_model``.
    """
    builder = builder or _default_builder()
    size = int(input_size or 224)
    shape = (in_channels, size, size)
    common = dict(num_classes=num_classes, in_channels=in_channels, small_input=size < 64, input_size=size)
    rows, baselines = [], {}
    for model, gen, r, place in _cells(models, generators, rs, placements):
        if model not in baselines:
            baselines[model] = _build(builder, model, device, activation="relu", generator=None, r=None,
                                      placement=place, **common)[0]
        variant, sites = _build(builder, model, device, activation=activation, generator=gen, r=r,
                                placement=place, **common)
        rows.append(_row(model, gen, r, place, variant, baselines[model], sites, shape))
    return pd.DataFrame(rows)


def _cells(models, generators, rs, placements):
    """The design grid, with r collapsed to "-" for generators that do not use it."""
    seen = []
    for model, gen, r, place in itertools.product(_seq(models), _seq(generators), _seq(rs), _seq(placements)):
        cell = (model, gen, r if gen in _USES_R else None, place)
        if cell not in seen:
            seen.append(cell)
    return seen


def _seq(value) -> list:
    """A single value or a sequence, as a list."""
    return [value] if isinstance(value, (str, int)) or value is None else list(value)


def _build(builder, name, device, **kwargs):
    """Build ``(model, sites)`` on ``device`` (default ``meta``: no memory, no init arithmetic)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("generator", "r")}
    with torch.device(device):
        return builder(name, **kwargs)


def _row(model, gen, r, place, variant, baseline, sites, shape) -> dict:
    """Counts of one variant and its overhead over the baseline."""
    a, b = complexity.count(variant, shape), complexity.count(baseline, shape)
    extra = a.params - b.params
    return {
        "model": model, "generator": gen, "r": "-" if r is None else r, "placement": place,
        "sites": len(sites) if not isinstance(sites, int) else sites,
        "params_M": a.params / 1e6, "params_baseline_M": b.params / 1e6,
        "params_extra": extra, "params_extra_pct": complexity.percent(extra, b.params),
        "macs_M": a.macs / 1e6, "elementwise_ops_M": a.elementwise_ops / 1e6,
        "elementwise_ops_baseline_M": b.elementwise_ops / 1e6,
        "flops_M": a.flops / 1e6, "flops_baseline_M": b.flops / 1e6,
        "flops_extra_pct": complexity.percent(a.flops - b.flops, b.flops),
    }
