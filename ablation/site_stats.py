"""What each activation site learned: beta, p1, p2 and how linear its switch is, on held-out inputs.

``activation_stats(model, batches)`` runs the model in eval mode under ``torch.no_grad`` with a forward
pre-hook on every ACON-family module (ACON-A/B/C, meta-ACON with any generator) and, so that a baseline's
rows line up by site, on every other activation module (``ablation.site_kinds.SITE_KINDS``, ``se_control``).
The hooks are removed and the training mode restored afterwards: nothing stays in the model.

``linear_fraction`` is the mean, over every input element the site sees, of ``1 - |2 g(z) - 1|`` where
``z = beta (p1 - p2) x`` is the argument of the switch and ``g`` its gate (sigmoid or hard sigmoid).
ACON-C computes ``p2 x + (p1 - p2) x g(z)``: at ``g = 1/2`` that is the mean ``(p1 + p2) x / 2``, a
linear map ("not activated"); at ``g`` in {0, 1} it is ``max(p1 x, p2 x)``, the kink ("activated").
So the fraction is 1.0 when beta = 0 or p1 = p2, and tends to 0 as beta |p1 - p2| |x| grows.

``beta_std_samples`` is how much beta depends on the input: at each channel and position (H x W, or the
tokens of an N x L x C input), the standard deviation of beta across the samples measured (population std),
then the mean over channels and positions (per channel: over positions). A layer- or channel-wise beta is
the same at every position, so this is its std across samples per channel; a pixel-wise beta is not averaged
over positions first, which would shrink the spread. 0 for a beta that does not depend on the input (ACON-C).
The gate (sigmoid or hard sigmoid) does not enter: it acts on the switch, not on beta.

meta-ACON's rivals (DY-ReLU, FReLU, PAU, SMU, SMU-1, APA) get a row too, with the ACON columns NaN and their own
(``ablation.rival_stats``: DY-ReLU's piece shares and slopes, FReLU's branch share, the pointwise rivals' learned
parameters); ``generator`` then holds the rival's options that shape its function (``k=2``, ``kernel_size=3`` ...).
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from acon import _layout
from acon.gated import GatedActivation
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
from ablation.rival_stats import RIVAL_COLUMNS, RIVAL_MODULES, describe_rival, observe_rival, rival_row
from ablation.site_finder import find_sites
from ablation.site_kinds import SITE_KINDS
from ablation.site_tracing import trace
from ablation.sites import Site, assign_stages

#: One row per site, in depth (execution) order.
SITE_COLUMNS = ("site", "path", "stage", "width", "activation", "generator", "beta_mean", "beta_std_samples",
                "beta_std_channels", "p1_mean", "p2_mean", "linear_fraction", "x_mean", "x_std") + RIVAL_COLUMNS
#: One row per site and channel: what the learned curve ``y = f(x)`` of that channel is.
CHANNEL_COLUMNS = ("site", "channel", "p1", "p2", "beta_mean", "beta_std_samples", "x_std")
ACON_MODULES = (AconA, AconB, AconC, MetaAcon, MetaAconC)


@dataclass
class SiteStats:
    """The measured statistics: ``sites`` (one row per site) and ``channels`` (one row per site and channel)."""

    sites: pd.DataFrame
    channels: pd.DataFrame

    def summary(self) -> dict[str, float]:
        """Means over the ACON sites (each site weighs the same): ``beta_mean`` and ``linear_fraction``."""
        acon = self.sites.dropna(subset=["beta_mean"])
        if acon.empty:
            return {}
        return {"beta_mean": float(acon["beta_mean"].mean()), "linear_fraction": float(acon["linear_fraction"].mean())}


def activation_stats(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None,
                     sites: Sequence[Site] | None = None) -> pd.DataFrame:
    """Per-site statistics of ``model``'s activations on ``batches`` (tensors or ``(x, y)`` pairs); see ``measure``."""
    return measure(model, batches, max_batches=max_batches, sites=sites).sites


def measure(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None,
            sites: Sequence[Site] | None = None) -> SiteStats:
    """Run ``model`` (eval mode, no grad) on at most ``max_batches`` of ``batches`` and measure every site.

    ``sites`` (what ``build_model`` returned) name the changed sites by their original call path and
    stage; without them a site is named by its module path (``#k`` for the k-th call of a shared
    module) and staged by ``ablation.assign_stages``. A ``torch.compile`` wrapper is measured eager.
    A site's width is its size on the channel axis: an ACON module's own ``channel_dim``; for the
    model's other activations the axis the surgery would give them (``ablation.site_layout``: last after a
    Linear or LayerNorm, as on ViT and Mixer tokens N x L x C), found by tracing the model once.
    """
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be an integer >= 1 or None, got {max_batches!r}")
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: hooks go on the eager module
    probes = _probes(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = iter(batches)
    first = next(batches, None)

    def new_forward(*_: Any) -> None:  # a pre-hook that returned a value would replace the model's input
        for p in probes:
            p.k = 0

    handles: list = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if first is not None:  # before the hooks: finding the axes runs the model on one sample
                _set_axes(model, probes, _input(first)[:1].to(device))
            handles = [model.register_forward_pre_hook(new_forward)]
            handles += [p.module.register_forward_pre_hook(p.hook) for p in probes]
            for i, batch in enumerate(itertools.chain([first] if first is not None else [], batches)):
                if max_batches is not None and i >= max_batches:
                    break
                model(_input(batch).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return _frames([acc for p in probes for acc in p.calls], sites)


def _input(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _set_axes(model: nn.Module, probes: list[_Probe], sample: Tensor) -> None:
    """Give each probe of a module without ``channel_dim`` (a baseline's ReLU, GELU ...) the channel axis the
    surgery finds for it; a model fx cannot trace keeps axis 1, with a warning (the statistics still come).

    Shapes come from running the eval-mode model on one real ``sample``: fake tensors would reach the fused
    ACON kernels of a partly changed model, and BatchNorm in eval mode changes nothing."""
    if all(hasattr(p.module, "channel_dim") for p in probes):
        return  # ACON modules carry their axis: no trace
    try:
        gm = trace(model)
        ShapeProp(gm).propagate(sample)
        axes: dict[str, int] = {}
        for site, node in find_sites(gm):
            if node.op == "call_module":
                axes.setdefault(str(node.target), site.channel_dim)
    except Exception as e:  # noqa: BLE001 - any trace failure; a statistic must not fail a finished trial
        warnings.warn(f"site statistics: channel axes of {type(model).__name__} not found, axis 1 assumed: {e}")
        return
    for p in probes:
        p.channel_dim = getattr(p.module, "channel_dim", axes.get(p.path, 1))


@dataclass
class _Calls:
    """Running sums of one call site, in float64 on the model's device (one sync at the end)."""

    path: str
    module: nn.Module
    order: int
    spatial: tuple[int, ...] = ()
    width: int = 0
    elements: int = 0
    samples: int = 0
    batches: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    def add(self, name: str, value: Tensor) -> None:
        value = value.double()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def total(self, name: str) -> Tensor | None:
        return self.sums[name].cpu() if name in self.sums else None

    def merge_beta(self, beta: Tensor, xc: Tensor) -> None:
        """Merge one batch's beta into its mean and sum of squared deviations across samples, per channel and
        position, kept at beta's own shape ``(C, 1 | H, 1 | W)`` (one per position only where beta varies there).

        Pairwise (Chan et al.): a sum of squares minus a squared sum loses a spread far below beta itself.
        Called after ``samples`` counted this batch."""
        beta = beta.float().reshape((1,) * (xc.ndim - beta.ndim) + tuple(beta.shape))  # broadcasts from the right
        mean = beta.mean(0)
        m2 = (beta - mean).square_().sum(0)  # two passes (var_mean over dim 0 is 3x slower on CPU); 0 if shared
        shape = (xc.shape[1],) + tuple(mean.shape[1:])
        n, mean, m2 = xc.shape[0], mean.expand(shape).double(), m2.expand(shape).double()
        if "b_mean" not in self.sums:
            self.sums["b_mean"], self.sums["b_m2"] = mean, m2
            return
        before = self.samples - n
        delta = mean - self.sums["b_mean"]
        self.sums["b_mean"] = self.sums["b_mean"] + delta * (n / self.samples)
        self.sums["b_m2"] = self.sums["b_m2"] + m2 + delta.square() * (before * n / self.samples)


class _Probe:
    """The pre-hook of one module: each call within a forward is its own site (``path#k``)."""

    def __init__(self, path: str, module: nn.Module, clock: list[int]):
        self.path, self.module, self.clock = path, module, clock
        self.channel_dim: int = getattr(module, "channel_dim", 1)
        self.calls: list[_Calls] = []
        self.k = 0

    def hook(self, module: nn.Module, args: tuple) -> None:
        if self.k == len(self.calls):
            self.calls.append(_Calls(self.path, module, self.clock[0]))
            self.clock[0] += 1
        _observe(self.calls[self.k], module, args[0], self.channel_dim)
        self.k += 1


def _probes(model: nn.Module) -> list[_Probe]:
    """A probe per activation module; a site module's own children (se_control's ReLU) are not sites."""
    # read now: SITE_KINDS grows when a library's activations are registered (timm's GELU, Swish ...)
    kinds = ACON_MODULES + RIVAL_MODULES + (GatedActivation,) + tuple(cls for classes, _, _ in SITE_KINDS.values() for cls in classes)
    probes, inside, clock = [], (), [0]
    for path, module in model.named_modules():
        if any(p == "" or path.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, kinds):
            probes.append(_Probe(path, module, clock))
            inside += (path,)
    return probes


def _observe(acc: _Calls, module: nn.Module, x: Tensor, channel_dim: int) -> None:
    """Add one batch of one site: input moments; for ACON, beta's moments across samples and the switch."""
    xc = x if x.ndim < 2 else _layout.channels_first(x, channel_dim, x.shape[channel_dim])
    xc = xc.float()
    acc.width, acc.spatial = int(xc.shape[1]), tuple(xc.shape[2:])
    acc.elements += xc.numel()
    acc.samples += xc.shape[0]
    acc.batches += 1
    # per channel, over samples and positions; the site's totals are their sums (one pass each)
    dims = (0,) + tuple(range(2, xc.ndim))
    acc.add("x_c", xc.sum(dim=dims))
    acc.add("x2_c", xc.square().sum(dim=dims))
    parts = acon_parts(module, xc)
    if parts is None:
        observe_rival(acc, module, xc)
        return
    p1, p2, beta, centred = parts
    acc.merge_beta(beta, xc)
    # 1 - |2 g(z) - 1| summed: numel minus the sum of |2 g(z) - 1|, the gate centred (tanh(z / 2) for the sigmoid)
    acc.add("decided", centred(xc * (beta * (p1 - p2))).abs_().sum())
    acc.add("p1", _layout.per_channel(p1, xc).reshape(-1).expand(xc.shape[1]))
    acc.add("p2", _layout.per_channel(p2, xc).reshape(-1).expand(xc.shape[1]))


def _centred(z: Tensor) -> Tensor:
    """``2 sigmoid(z) - 1``, as ``tanh(z / 2)`` (one op)."""
    return torch.tanh(z * 0.5)


def _hard_centred(z: Tensor) -> Tensor:
    """``2 hardsigmoid(z) - 1 = clamp(z / 3, -1, 1)``."""
    return (z * (1.0 / 3.0)).clamp_(-1.0, 1.0)


def acon_parts(module: nn.Module, xc: Tensor) -> tuple[Tensor, Tensor, Tensor, Any] | None:
    """``(p1, p2, beta, centred gate)`` of an ACON-family module for channels-first input ``xc``, all
    broadcasting against it (ACON-A is p1 = 1, p2 = 0; ACON-B p1 = 1, p2 = p; the gate as ``2 g(z) - 1``);
    None for any other module."""
    gate = _hard_centred if getattr(module, "gate", "sigmoid") == "hard_sigmoid" else _centred
    shaped = lambda p: _layout.per_channel(p, xc).float()  # noqa: E731
    if isinstance(module, AconA):
        beta = shaped(module.beta)
        return torch.ones_like(beta), torch.zeros_like(beta), beta, _centred
    if isinstance(module, AconB):
        p = shaped(module.p)
        return torch.ones_like(p), p, shaped(module.beta), _centred
    if isinstance(module, AconC):
        return shaped(module.p1), shaped(module.p2), shaped(module.beta), gate
    if isinstance(module, MetaAcon):
        return shaped(module.p1), shaped(module.p2), module.generator(xc), gate
    if isinstance(module, MetaAconC):
        return shaped(module.p1), shaped(module.p2), module.beta(xc), gate
    return None


def describe(module: nn.Module) -> tuple[str, str]:
    """The (activation, generator) names of a site module, as the registries spell them ("-": none); for a rival,
    its name and the options that shape its function."""
    rival = describe_rival(module)
    if rival is not None:
        return rival
    if isinstance(module, MetaAconC):
        return "meta_acon", "channel"
    if isinstance(module, MetaAcon):
        name = type(module.generator).__name__
        return "meta_acon", name[:-4].lower() if name.endswith("Beta") else name
    if isinstance(module, AconC):
        return "acon_c", "learned" if isinstance(module.beta, nn.Parameter) else "fixed"
    if isinstance(module, (AconA, AconB)):
        return type(module).__name__.lower().replace("acon", "acon_"), "-"
    if isinstance(module, GatedActivation):
        return "se_control", "-"
    kind = next((k for k, (classes, _, _) in SITE_KINDS.items() if isinstance(module, classes)), "")
    return kind or type(module).__name__.lower(), "-"


def _frames(calls: list[_Calls], sites: Sequence[Site] | None) -> SiteStats:
    """The site and channel frames, in first-call order."""
    calls = sorted(calls, key=lambda c: c.order)
    shared = {c.path for c in calls if sum(d.path == c.path for d in calls) > 1}
    paths, seen = [], {}
    for c in calls:
        seen[c.path] = seen.get(c.path, 0) + 1
        paths.append(f"{c.path}#{seen[c.path]}" if c.path in shared else c.path)
    stages = assign_stages(paths, [c.spatial for c in calls]) if calls else []
    by_target = {s.target: s for s in sites or ()}
    rows, channel_rows = [], []
    for i, (c, path, stage) in enumerate(zip(calls, paths, stages)):
        known = by_target.get(path)
        row, per_channel = _row(c)
        row.update(rival_row(c))
        activation, generator = describe(c.module)
        rows.append({"site": i, "path": known.path if known else path, "stage": known.stage if known else stage,
                     "width": c.width, "activation": activation, "generator": generator, **row})
        channel_rows += [{"site": i, "channel": ch, **values} for ch, values in enumerate(per_channel)]
    more = list(dict.fromkeys(k for r in rows for k in r if k not in SITE_COLUMNS))  # DY-ReLU with K > 3 pieces
    return SiteStats(pd.DataFrame(rows, columns=list(SITE_COLUMNS) + more), pd.DataFrame(channel_rows, columns=list(CHANNEL_COLUMNS)))


def _row(c: _Calls) -> tuple[dict[str, float], list[dict[str, float]]]:
    """One site's statistics and its per-channel values (empty for a baseline)."""
    n = max(c.elements, 1)
    x_mean = float(c.total("x_c").sum()) / n
    out = {"x_mean": x_mean, "x_std": math.sqrt(max(float(c.total("x2_c").sum()) / n - x_mean ** 2, 0.0))}
    nan = {k: math.nan for k in ("beta_mean", "beta_std_samples", "beta_std_channels", "p1_mean", "p2_mean",
                                 "linear_fraction")}
    b = c.total("b_mean")
    if b is None:
        return {**nan, **out}, []
    b_mean = b.reshape(c.width, -1).mean(1)  # per channel, over samples and positions
    b_std = (c.total("b_m2") / c.samples).clamp_min(0).sqrt().reshape(c.width, -1).mean(1)  # see the module's doc
    p1, p2 = c.total("p1") / c.batches, c.total("p2") / c.batches
    seen = n / c.width  # elements of one channel seen
    x_c = c.total("x_c") / seen
    x_std = (c.total("x2_c") / seen - x_c.square()).clamp_min(0).sqrt()
    out.update(beta_mean=float(b_mean.mean()), beta_std_samples=float(b_std.mean()),
               beta_std_channels=float(b_mean.std(unbiased=False)), p1_mean=float(p1.mean()), p2_mean=float(p2.mean()),
               linear_fraction=1.0 - float(c.total("decided")) / n)
    per_channel = [{"p1": float(a), "p2": float(q), "beta_mean": float(m), "beta_std_samples": float(s),
                    "x_std": float(v)} for a, q, m, s, v in zip(p1, p2, b_mean, b_std, x_std)]
    return out, per_channel
