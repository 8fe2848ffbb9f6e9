"""Parameter and FLOP counts that include the elementwise ops meta-ACON is made of.

Most FLOP counters count only convolutions and matrix products; meta-ACON's cost is mostly
sigmoid, mul, add and mean. ``count`` runs one forward pass under a ``TorchDispatchMode``,
takes the conv/linear formulas from ``torch.utils.flop_counter`` and counts every
elementwise aten op itself. It works on the ``meta`` device, so a ResNet-50 at 224 costs
no arithmetic.

Convention (``FLOP_CONVENTION``): one multiply-add = 1 FLOP (the paper's "FLOPs" column is
MACs), and each elementwise op costs 1 FLOP per output element (reductions and pools: per
input element); eval-mode BN is one mul and one add per element. Fused ACON-C kernels are
counted as the reference formula's ops. Conv/linear bias adds are inside the MAC count's convention (not counted).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from acon import _fused

FLOP_CONVENTION = "MAC: flops = MACs of convs/linears (1 multiply-add = 1) + elementwise ops (1 per element)"
KINDS = ("sigmoid", "mul", "add", "mean", "other")

aten = torch.ops.aten

# Why a table and not "every op": data movement (views, copies, cat) costs no arithmetic.
_KIND_OF: dict[str, str] = {}
for _kind, _names in {
    "sigmoid": ("sigmoid", "sigmoid_"),
    "mul": ("mul", "mul_"),
    "add": ("add", "add_", "sub", "sub_", "rsub"),
    "mean": ("mean", "sum", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "avg_pool2d"),
    "other": (
        "relu", "relu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "mish",
        "tanh", "exp", "neg", "div", "div_", "clamp", "clamp_min", "where", "softplus", "_prelu_kernel", "prelu",
        "addcmul", "native_layer_norm", "_log_softmax", "_softmax", "hardswish", "hardsigmoid", "elu", "abs", "pow", "sqrt",
        "rsqrt", "reciprocal", "erf", "minimum", "maximum", "max_pool2d_with_indices", "amax", "max", "log", "log1p",
    ),
}.items():
    _KIND_OF.update(dict.fromkeys(_names, _kind))

# Reductions and pools cost one op per input element, not per output element.
_PER_INPUT = {"mean", "sum", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d_with_indices", "amax", "max"}

_FREE = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze", "clone",
    "copy_", "detach", "cat", "flatten", "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like",
    "fill_", "full", "slice", "select", "split", "split_with_sizes", "chunk", "alias", "as_strided", "_to_copy",
    "lift_fresh", "randn", "normal_", "stack", "contiguous", "movedim", "unbind", "zero_", "new_empty",
    "new_zeros", "_reshape_alias", "empty_strided", "index_select", "embedding", "dropout", "native_dropout",
    "promote_types", "result_type", "_local_scalar_dense", "item", "expand_as", "broadcast_tensors", "new_ones",
}


def _batch_norm_ops(x, *_) -> dict[str, int]:
    """Eval-mode BN is ``x * scale + shift``: one mul and one add per element (as ablation.generators counts it)."""
    return {"mul": x.numel(), "add": x.numel()}


# Ops that stand for several elementwise ops: BN (``count`` runs the reference ACON formula, never the fused op).
_FUSED = dict.fromkeys(("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training"),
                       _batch_norm_ops)


@dataclass(frozen=True)
class Complexity:
    """Counts for one forward pass: params, conv/linear MACs, and elementwise ops by kind."""

    params: int
    macs: int
    elementwise: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    uncounted: tuple[str, ...] = ()
    convention: str = FLOP_CONVENTION

    @property
    def elementwise_ops(self) -> int:
        """All elementwise ops (sigmoid + mul + add + mean + other)."""
        return sum(self.elementwise.values())

    @property
    def flops(self) -> int:
        """Total FLOPs under the MAC convention: MACs + elementwise ops."""
        return self.macs + self.elementwise_ops

    def as_dict(self) -> dict:
        """A flat dict (elementwise kinds as ``elementwise_<kind>``) for tables and logging."""
        d = {k: v for k, v in asdict(self).items() if k not in ("elementwise", "uncounted", "convention")}
        d.update({f"elementwise_{k}": v for k, v in self.elementwise.items()})
        d.update(elementwise_ops=self.elementwise_ops, flops=self.flops)
        return d


class _Counter(TorchDispatchMode):
    """Counts MACs through torch's formulas and elementwise ops through ``_KIND_OF``."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.elementwise = dict.fromkeys(KINDS, 0)
        self.uncounted: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out) -> None:
        packet = func._overloadpacket
        name = packet.__name__
        if packet in flop_counter.flop_registry:
            # torch's formulas use the 2xMAC convention.
            self.macs += flop_counter.flop_registry[packet](*args, **kwargs, out_val=out) // 2
        elif name in _FUSED:
            for kind, n in _FUSED[name](*args).items():
                self.elementwise[kind] += n
        elif name in _KIND_OF:
            source = args[0] if name in _PER_INPUT else out
            self.elementwise[_KIND_OF[name]] += _numel(source)
        elif name not in _FREE:
            self.uncounted.add(name)


def _numel(value) -> int:
    """Elements of the first tensor in ``value`` (an op's output may be a tuple)."""
    tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return tensors[0].numel() if tensors else 0


def full_shape(input_shape) -> tuple[int, ...]:
    """``(C, H, W)`` or ``(F,)`` gets a batch of 1; ``(N, C, H, W)`` and ``(N, F)`` are kept."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, got {tuple(input_shape)}")
    return (1,) + shape if len(shape) in (1, 3) else shape


def count_params(model: nn.Module) -> int:
    """Learnable parameters (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count(model: nn.Module, input_shape, *, device=None) -> Complexity:
    """Count params, MACs and elementwise ops of one eval-mode forward pass on ``input_shape``.

    The input is made on ``device`` (default: the model's own device, ``meta`` included).
    """
    device = device if device is not None else _device_of(model)
    x = torch.zeros(full_shape(input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        # Fused ACON kernels run outside aten (ctypes / Triton), invisible to a dispatch mode; the
        # reference path runs the same arithmetic as aten ops, so counting it counts the kernel's work.
        with torch.no_grad(), _fused.use_fused(False), _Counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return Complexity(count_params(model), counter.macs, dict(counter.elementwise), tuple(sorted(counter.uncounted)))


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def overhead(model: nn.Module, baseline: nn.Module, input_shape, *, sites=None, device=None) -> dict:
    """Complexity of ``model`` and its extra cost over ``baseline``, keyed as the MLflow metrics."""
    a, b = count(model, input_shape, device=device), count(baseline, input_shape, device=device)
    out = {
        "params": a.params,
        "params_baseline": b.params,
        "params_extra": a.params - b.params,
        "params_extra_pct": percent(a.params - b.params, b.params),
        "macs": a.macs,
        "macs_baseline": b.macs,
        "elementwise_ops": a.elementwise_ops,
        "elementwise_ops_baseline": b.elementwise_ops,
        "flops": a.flops,
        "flops_baseline": b.flops,
        "flops_extra_pct": percent(a.flops - b.flops, b.flops),
    }
    if sites is not None:
        out["sites"] = sites if isinstance(sites, int) else len(sites)
    return out


def percent(extra: float, base: float) -> float:
    """``100 * extra / base``; NaN when the base is zero."""
    return 100.0 * extra / base if base else math.nan


def latency(model: nn.Module, baseline: nn.Module, input_shape, *, backward: bool = False, min_run_time: float = 0.5,
            rounds: int = 3, device=None) -> dict:
    """Measured time per forward (or forward+backward) of ``model`` and ``baseline`` in one run, and their ratio.

    Uses ``torch.utils.benchmark`` (warm-up, CUDA sync, median of blocks); both are timed in the
    same process on the same input so the ratio is comparable across machines.
    """
    device = device if device is not None else _device_of(model)
    x = torch.randn(full_shape(input_shape), device=device, requires_grad=backward)
    step = "m(x).sum().backward()" if backward else "m(x)"
    times = {"variant_s": math.inf, "baseline_s": math.inf}
    # Alternate the two models over rounds and keep each one's best median: load from other
    # processes then hits both alike instead of whichever ran second.
    for _ in range(rounds):
        for key, m in (("variant_s", model), ("baseline_s", baseline)):
            times[key] = min(times[key], _time(m, x, step, backward, min_run_time / rounds))
    times["ratio"] = times["variant_s"] / times["baseline_s"]
    return times


def _timer_module():
    """``torch.utils.benchmark``, imported without its import-time warning: it loads ``cpp_extension``,
    which logs "No CUDA runtime is found" on any machine with a CUDA toolkit and no GPU."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


def _time(m: nn.Module, x, step: str, backward: bool, min_run_time: float) -> float:
    """Median seconds of ``step`` on ``m`` in eval mode (BN accepts a batch of 1; both models alike)."""
    benchmark = _timer_module()

    was_training = m.training
    m.eval()
    try:
        with torch.set_grad_enabled(backward):
            timer = benchmark.Timer(step, globals={"m": m, "x": x})
            return timer.blocked_autorange(min_run_time=min_run_time).median
    finally:
        m.train(was_training)
