"""The overhead table: params and FLOPs of meta-ACON variants against the unmodified model, no training.

Models are built on the ``meta`` device by default (shapes only), so ResNet-50 at 224 costs
no arithmetic. FLOPs follow ``ablation.complexity.FLOP_CONVENTION`` (1 multiply-add = 1 FLOP,
elementwise ops counted separately and named as such). ``replaces`` names the model's own
activations the variant replaced (``relu x16``, ``gelu x12``).
"""
from __future__ import annotations

import itertools

import pandas as pd
import torch

from ablation import complexity
from ablation.sites import Site, describe_replaced
from ablation.surgery import NoSiteError
from studies.training.config import check_int

EXPORTS = ("onnx",)


def _default_builder():
    """``ablation.build_model``, imported on first use."""
    import ablation

    return ablation.build_model


def _uses_r(generator) -> bool:
    """Whether ``generator`` takes a reduction ratio (only those cells vary over r)."""
    from ablation.generators import takes_option

    return takes_option(generator, "r")


def overhead_table(models, generators, rs, placements, *, input_size=None, activation="meta_acon",
                   num_classes: int = 1000, in_channels: int = 3, builder=None, device="meta",
                   latency: bool = False, latency_device=None, export: str | None = None) -> pd.DataFrame:
    """One row per (activation, model, generator, r, placement): params and FLOPs against the unmodified model.

    ``activation``: one name or several (meta-ACON and its rivals side by side); an activation that takes no
    generator gets one row per placement (generator "-"), and r only where it takes one.

    ``input_size`` None means each model's native ImageNet size (``small_input=False``); a size
    under 64 builds the small-input (CIFAR-style) stem. ``builder`` defaults to
    ``ablation.build_model``; the baseline is ``activation="relu", placement="none"``. Cells a
    model cannot take (a placement selecting no site: the builder raises ``ablation.NoSiteError``) are
    left out and listed in ``.attrs["skipped"]``; a misspelt name or a bad value is raised.
    ``latency`` adds measured forward and forward+backward time ratios (variant / baseline, batch 1)
    on ``latency_device`` (default: this machine's accelerator, else the CPU). ``export="onnx"``
    adds whether each variant exports to ONNX and runs in onnxruntime with the same outputs
    (``report.export``; needs the ``export`` extra).
    """
    if export is not None and export not in EXPORTS:
        raise ValueError(f"unknown export format {export!r}; valid choices: {', '.join(EXPORTS)}")
    if export is not None:
        from report.export import require_export_extra

        require_export_extra()
    if input_size is not None:
        check_int("input size", input_size, 1)
    builder = builder or _default_builder()
    rows, skipped, baselines = [], [], {}
    for activation, model, gen, r, place in _cells(models, generators, rs, placements, activation):
        size, common = _geometry(model, input_size, num_classes, in_channels)
        if model not in baselines:
            baselines[model] = _build(builder, model, device, activation="relu", generator=None, r=None,
                                      placement="none", **common)[0]
        try:
            variant, sites = _build(builder, model, device, activation=activation, generator=gen, r=r,
                                    placement=place, **common)
        except NoSiteError as e:  # e.g. bottleneck_3x3 on a ShuffleNet; a misspelt name or a bad r is raised
            skipped.append(f"{model}/{gen}/{'-' if r is None else r}/{place}: {e}")
            continue
        rows.append({"activation": activation if isinstance(activation, str) else getattr(activation, "__name__", "?"),
                     **_row(model, gen, r, place, variant, baselines[model], sites, (in_channels, size, size))})
        if latency:
            rows[-1].update(_latency(builder, model, gen, r, place, activation, common, latency_device))
        if export is not None:
            rows[-1].update(_export(builder, model, gen, r, place, activation, common))
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = skipped
    table.attrs["convention"] = complexity.FLOP_CONVENTION
    return table


def terminal_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The overhead table for a terminal (about 100 columns): the design, its sites, params and FLOPs with
    their overhead, and the latency and ONNX columns when measured. The baseline counts, MACs and
    elementwise ops are in the other formats."""
    if table.empty:
        return table
    shown = ["model", "generator", "r", "placement", "sites"]
    if set(table["activation"]) != {"meta_acon"}:  # rivals side by side: name each row's activation
        shown.insert(0, "activation")
    out = table[shown].astype(str)
    if not table["replaces"].astype(str).str.fullmatch(r"relu x\d+|-").all():  # not only ReLUs replaced
        out["replaces"] = table["replaces"]
    out["params"] = [_count(v * 1e6) for v in table["params_M"]]
    out["params +"] = [f"{_count(n, sign=True)} ({p:+.2f}%)" for n, p in zip(table["params_extra"],
                                                                           table["params_extra_pct"])]
    out["FLOPs"] = [_count(v * 1e6) for v in table["flops_M"]]
    out["FLOPs +%"] = [f"{v:+.2f}" for v in table["flops_extra_pct"]]
    for key, name in (("latency_fwd_ratio", "fwd x"), ("latency_fwd_bwd_ratio", "fwd+bwd x")):
        if key in table:
            out[name] = [f"{v:.2f}" for v in table[key]]
    if "onnx" in table:
        out["onnx"] = table["onnx"].astype(str)
    return out


def _count(n: float, *, sign: bool = False) -> str:
    """A count, readable: ``25.747M``, ``+189.8k``, ``4.136G``, ``912``."""
    for scale, unit, digits in ((1e9, "G", 3), (1e6, "M", 3), (1e3, "k", 1)):
        if abs(n) >= scale:
            return f"{n / scale:{'+' if sign else ''}.{digits}f}{unit}"
    return f"{round(n):{'+' if sign else ''}d}"


def _latency(builder, model, gen, r, place, activation, common, device) -> dict:
    """Measured time ratios of one cell: real weights on a real device (a meta model cannot run)."""
    device = device or _local_device()
    base = _build(builder, model, device, activation="relu", generator=None, r=None, placement="none", **common)[0]
    variant = _build(builder, model, device, activation=activation, generator=gen, r=r, placement=place, **common)[0]
    shape = (common["in_channels"], common["input_size"], common["input_size"])
    fwd = complexity.latency(variant, base, shape)
    both = complexity.latency(variant, base, shape, backward=True)
    return {"latency_fwd_ratio": fwd["ratio"], "latency_fwd_bwd_ratio": both["ratio"]}


def _export(builder, model, gen, r, place, activation, common) -> dict:
    """The ONNX check of one cell, on CPU weights (a meta model cannot run)."""
    from report.export import onnx_check

    variant = _build(builder, model, "cpu", activation=activation, generator=gen, r=r, placement=place, **common)[0]
    return onnx_check(variant, (1, common["in_channels"], common["input_size"], common["input_size"]))


def _local_device() -> torch.device:
    """This machine's accelerator if it has one, else the CPU."""
    accel = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accel or torch.device("cpu")


def _geometry(model, input_size, num_classes, in_channels) -> tuple[int, dict]:
    """The input side and the build options shared by the baseline and the variants."""
    from ablation.models import default_input_size

    size = int(default_input_size(model, False) if input_size is None else input_size)
    return size, dict(num_classes=num_classes, in_channels=in_channels, small_input=size < 64, input_size=size)


def _cells(models, generators, rs, placements, activations="meta_acon"):
    """The design grid: generator collapsed to None for an activation that takes none, r to None where neither
    the generator nor the activation uses it."""
    seen = []
    for act, model, gen, r, place in itertools.product(_seq(activations), _seq(models), _seq(generators), _seq(rs),
                                                       _seq(placements)):
        takes = _takes(act)
        gen = gen if takes is None or "generator" in takes else None
        uses_r = _uses_r(gen) if gen is not None else takes is not None and "r" in takes
        cell = (act, model, gen, r if uses_r else None, place)
        if cell not in seen:
            seen.append(cell)
    return seen


def _takes(activation) -> frozenset[str] | None:
    """The options ``activation`` accepts (None: a callable, taken to be meta-ACON-like)."""
    from acon.activations import activation_options

    return activation_options(activation) if isinstance(activation, str) else None


def _seq(value) -> list:
    """A single value or a sequence, as a list."""
    return [value] if isinstance(value, (str, int)) or value is None else list(value)


def _build(builder, name, device, **kwargs):
    """Build ``(model, sites)`` on ``device`` (default ``meta``: no memory, no init arithmetic)."""
    with torch.device(device):
        return builder(name, **kwargs)


def _row(model, gen, r, place, variant, baseline, sites, shape) -> dict:
    """Counts of one variant and its overhead over the baseline."""
    a, b = complexity.count(variant, shape), complexity.count(baseline, shape)
    extra = a.params - b.params
    return {
        "model": model, "generator": "-" if gen is None else gen, "r": "-" if r is None else r, "placement": place,
        "sites": len(sites) if not isinstance(sites, int) else sites,
        "replaces": describe_replaced(sites) if _all_sites(sites) else "-",
        "params_M": a.params / 1e6, "params_baseline_M": b.params / 1e6,
        "params_extra": extra, "params_extra_pct": complexity.percent(extra, b.params),
        "macs_M": a.macs / 1e6, "elementwise_ops_M": a.elementwise_ops / 1e6,
        "elementwise_ops_baseline_M": b.elementwise_ops / 1e6,
        "flops_M": a.flops / 1e6, "flops_baseline_M": b.flops / 1e6,
        "flops_extra_pct": complexity.percent(a.flops - b.flops, b.flops),
    }


def _all_sites(sites) -> bool:
    """Whether a builder returned ``Site`` records (a custom builder may return a count or names)."""
    return not isinstance(sites, int) and all(isinstance(s, Site) for s in sites)
