"""Fused ACON-C: one-pass forward and backward kernels behind a ``torch.library`` custom op.

Forward saves only x and the per-channel / per-plane parameters (beta per element only for
pixel-wise meta-ACON); backward recomputes the gate (sigmoid, or hard sigmoid with ``hard``)
and returns dx and the p1/p2/beta reductions in one pass. Being a custom op with a fake kernel
and registered autograd, it works under ``torch.compile`` with dynamic shapes. CPU: ``_fused_cpu`` (JIT-built C++);
CUDA: ``_fused_triton``. ``ACON_FUSED=0`` or ``use_fused(False)`` selects the reference.
``kernel_calls()`` counts which implementation ran, so tests can prove a kernel did.
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import os
import warnings
from typing import Iterator

import torch
from torch import Tensor

from acon import _fused_cpu

_STATE = {"enabled": os.environ.get("ACON_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")}
_BACKENDS: dict[str, object | None] = {}
#: "<device or 'closed-form'>.<forward|backward>" -> calls in this process (see ``kernel_calls``).
_CALLS: collections.Counter = collections.Counter()
_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
#: Device types whose kernels read a half-precision x with parameters of another dtype (see ``_keeps_x_dtype``).
_MIXED = {"cuda"}
_HALF = (torch.float16, torch.bfloat16)


def set_fused(enabled: bool) -> None:
    """Turn the fused kernels on or off for this process (the default comes from ``ACON_FUSED``)."""
    _STATE["enabled"] = bool(enabled)


def fused_enabled() -> bool:
    """Whether ``acon.functional`` may dispatch to the fused kernels."""
    return _STATE["enabled"]


@contextlib.contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """Context manager: run the enclosed code with the fused kernels on or off."""
    before = _STATE["enabled"]
    set_fused(enabled)
    try:
        yield
    finally:
        set_fused(before)


def kernel_calls() -> dict[str, int]:
    """How often each implementation ran: keys ``cpu.forward``, ``cuda.backward``, ``closed-form.forward`` ..."""
    return dict(_CALLS)


def _load_backend(device_type: str) -> object | None:
    """The kernel backend for a device type, or None (warned once) where it cannot run."""
    if device_type == "cpu":
        lib = _fused_cpu.load_library()
        return None if lib is None else _CpuBackend(lib)
    if device_type == "cuda":
        try:  # Triton is optional: only a CUDA run needs it
            triton_kernels = importlib.import_module("acon._fused_triton")
        except ImportError as err:
            warnings.warn(f"ACON fused CUDA kernels disabled ({err}); using the reference implementation", RuntimeWarning, stacklevel=3)
        else:
            return _PlaneBackend(triton_kernels.forward, triton_kernels.backward)
    return None


# Where beta lives, for the kernels: one value per channel, per (sample, channel) plane, or per element.
PER_CHANNEL, PER_PLANE, PER_ELEMENT = 0, 1, 2


class _CpuBackend:
    """The C++ kernels: every beta layout natively, parameter gradients reduced in the kernel."""

    def __init__(self, lib):
        self.lib, self.kernels = lib, _fused_cpu

    def forward(self, x, p1, p2, beta, bmode, hard):
        return self.kernels.forward(self.lib, x, p1, p2, beta, bmode, hard)

    def backward(self, g, x, p1, p2, beta, bmode, hard):
        return self.kernels.backward(self.lib, g, x, p1, p2, beta, bmode, hard)


class _PlaneBackend:
    """Kernels that take beta per channel (1-D, C), per plane (1-D, N*C) or per element and return
    per-plane sums (3, N*C) for dp1, dp2 and dbeta: the Triton kernels and the closed form. Flattens
    beta for them and reduces their sums to (dx, dp1, dp2, dbeta) shaped like the inputs, as the C++
    kernel returns them."""

    def __init__(self, forward, backward):
        self.planes_forward, self.planes_backward = forward, backward

    def forward(self, x, p1, p2, beta, bmode, hard):
        return self.planes_forward(x, p1.reshape(-1), p2.reshape(-1), _plane_beta(x, beta, bmode), hard)

    def backward(self, g, x, p1, p2, beta, bmode, hard):
        gx, planes, gbeta = self.planes_backward(g, x, p1.reshape(-1), p2.reshape(-1), _plane_beta(x, beta, bmode), hard)
        acc = torch.float64 if x.dtype == torch.float64 or x.device.type == "cpu" else torch.float32
        sums = planes.to(acc).view(3, x.shape[0], -1)
        # one reduction over the samples for every per-channel sum (one launch on CUDA, not three)
        per_channel = sums.sum(1) if bmode == PER_CHANNEL else sums[:2].sum(1)
        if bmode == PER_ELEMENT:
            dbeta = gbeta
        else:
            dbeta = per_channel[2] if bmode == PER_CHANNEL else sums[2]
        return (gx, per_channel[0].to(p1.dtype).view(p1.shape), per_channel[1].to(p2.dtype).view(p2.shape),
                dbeta.to(beta.dtype).reshape(beta.shape))


def _plane_beta(x: Tensor, beta: Tensor, bmode: int) -> Tensor:
    """beta per element (x's shape), or flat: C values per channel, N*C per plane (no copy either way)."""
    return beta.view(x.shape) if bmode == PER_ELEMENT else beta.reshape(-1)


def backend(device_type: str) -> object | None:
    """The (cached) kernel backend for ``device_type``; building it is a one-time cost per process."""
    if device_type not in _BACKENDS:
        _BACKENDS[device_type] = _load_backend(device_type) if device_type in _DTYPES else None
    return _BACKENDS[device_type]


def _backend_ready(device_type: str) -> bool:
    # Inside torch.compile tracing never build; use the kernel only if eager code already built it.
    if torch.compiler.is_compiling():
        return _BACKENDS.get(device_type) is not None
    return backend(device_type) is not None


# ---------------------------------------------------------------------------------------------
# The closed form, in the plane kernels' layout: x contiguous (N, C, ...), p1/p2 (C,), beta flat
# ((C,) per channel, (N*C,) per plane) or in x's shape; the custom ops further down take the same three.


def _broadcastable(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The op's flat arguments as (p1 - p2, p2, beta) views that broadcast against ``x``; a flat beta
    has C values (per channel) or N*C (per plane)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    b = beta if beta.dim() > 1 else beta.view((-1, x.shape[1]) + (1,) * (x.dim() - 2))
    return (p1 - p2).view(shape), p2.view(shape), b


def _math_forward(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, hard: bool) -> Tensor:
    """Closed-form forward in torch ops, for a device without a kernel."""
    d, q, b = _broadcastable(x, p1, p2, beta)
    dx = d * x
    return dx * (torch.nn.functional.hardsigmoid if hard else torch.sigmoid)(b * dx) + q * x


def _math_backward(g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, hard: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form backward in torch ops, with the kernels' outputs."""
    d, q, b = _broadcastable(x, p1, p2, beta)
    full = beta.dim() > 1
    dx = d * x
    u = b * dx
    if hard:  # the hard sigmoid's slope is 1/6 strictly inside (-3, 3), as in torch's hardsigmoid_backward
        s, sp = torch.nn.functional.hardsigmoid(u), ((u > -3) & (u < 3)).to(u.dtype) / 6
    else:
        s = torch.sigmoid(u)
        sp = s * (1 - s)
    t = s + u * sp
    gbeta = g * sp * dx * dx
    dims = tuple(range(2, x.dim()))
    sums = [g * x * t, g * x * (1 - t)] + ([] if full else [gbeta])
    planes = torch.stack([v.sum(dims) if dims else v for v in sums]).reshape(len(sums), -1)
    if full:
        planes = torch.cat([planes, planes.new_zeros(1, planes.shape[1])])
    return g * (d * t + q), planes, gbeta if full else x.new_empty(0)


_CLOSED_FORM = _PlaneBackend(_math_forward, _math_backward)


def _kernels(x: Tensor, step: str):
    """The device's kernel backend (the closed form where none runs), with the call counted for ``kernel_calls``."""
    kernels = _BACKENDS.get(x.device.type) or backend(x.device.type)
    _CALLS[f"{'closed-form' if kernels is None else x.device.type}.{step}"] += 1
    return kernels or _CLOSED_FORM


def _run_forward(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int, hard: bool) -> Tensor:
    return _kernels(x, "forward").forward(x, p1, p2, beta, bmode, hard)


def _run_backward(g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int,
                  hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernels(x, "backward").backward(g, x, p1, p2, beta, bmode, hard)


# The op's arguments are contiguous: x (N, C, ...), p1 and p2 with C values, beta as ``bmode`` says.
@torch.library.custom_op("acon::acon_c_fused", mutates_args=())
def _acon_c_op(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int, hard: bool) -> Tensor:
    return _run_forward(x, p1, p2, beta, bmode, hard)


@_acon_c_op.register_fake
def _(x, p1, p2, beta, bmode, hard):
    return torch.empty_like(x)


@torch.library.custom_op("acon::acon_c_fused_backward", mutates_args=())
def _acon_c_backward_op(g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int,
                        hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _run_backward(g, x, p1, p2, beta, bmode, hard)


@_acon_c_backward_op.register_fake
def _(g, x, p1, p2, beta, bmode, hard):
    return torch.empty_like(x), torch.empty_like(p1), torch.empty_like(p2), torch.empty_like(beta)


def _setup_context(ctx, inputs, output):
    x, p1, p2, beta, ctx.bmode, ctx.hard = inputs
    ctx.save_for_backward(x, p1, p2, beta)


def _backward(ctx, grad, run_backward=_acon_c_backward_op):
    x, p1, p2, beta = ctx.saved_tensors
    return (*run_backward(grad.contiguous(), x, p1, p2, beta, ctx.bmode, ctx.hard), None, None)


_acon_c_op.register_autograd(_backward, setup_context=_setup_context)


class _AconCFunction(torch.autograd.Function):
    """Eager twin of the custom op: same kernels, without the op's dispatch cost per call
    (and without importing torch._dynamo, which the op's first call does: about 2 s)."""

    @staticmethod
    def forward(ctx, x, p1, p2, beta, bmode, hard):
        _setup_context(ctx, (x, p1, p2, beta, bmode, hard), None)
        return _run_forward(x, p1, p2, beta, bmode, hard)

    @staticmethod
    def backward(ctx, grad):
        return _backward(ctx, grad, _run_backward)


# ---------------------------------------------------------------------------------------------
# Dispatch: decide whether a call can run fused, and bring its arguments to the op's layout.


def _padded(t: Tensor, ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - t.dim()) + tuple(t.shape)


def _per_channel(t: Tensor, x: Tensor) -> bool:
    s = _padded(t, x.dim())
    return t.dim() <= x.dim() and s[0] == 1 and s[1] in (1, x.shape[1]) and all(v == 1 for v in s[2:])


def _per_plane(t: Tensor, x: Tensor) -> bool:
    s = _padded(t, x.dim())
    return t.dim() <= x.dim() and s[0] in (1, x.shape[0]) and s[1] in (1, x.shape[1]) and all(v == 1 for v in s[2:])


def can_fuse(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> bool:
    """True when the fused kernel handles this call: enabled, supported device/dtype and layouts."""
    return _plan(x, p1, p2, beta) is not None


def _plan(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> tuple[torch.dtype, bool] | None:
    """(compute dtype, whether x keeps its dtype beside parameters of another) for a call the fused
    kernel handles, else None. Checked once per call: this runs at every activation site."""
    if not _STATE["enabled"] or not isinstance(x, Tensor) or x.dim() < 2 or x.numel() == 0:
        return None
    if not (isinstance(p1, Tensor) and isinstance(p2, Tensor)) or p1.device != x.device or p2.device != x.device:
        return None
    if isinstance(beta, Tensor) and beta.device != x.device:
        return None
    promoted = _dtype(x, p1, p2, beta)
    mixed = _keeps_x_dtype(x, promoted)
    dt = x.dtype if mixed else promoted
    if dt not in _DTYPES.get(x.device.type, ()) or not _backend_ready(x.device.type):
        return None
    if not (_per_channel(p1, x) and _per_channel(p2, x)):
        return None
    if isinstance(beta, Tensor) and not (_per_plane(beta, x) or _padded(beta, x.dim()) == tuple(x.shape)):
        return None
    return dt, mixed


def _dtype(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float) -> torch.dtype:
    """``torch.result_type`` of the formula for floating inputs, written so dynamo can trace it."""
    dt = x.dtype
    for t in (p1, p2, beta):
        # 0-dim tensors and Python floats do not promote a floating x, as in torch's rules
        if isinstance(t, Tensor) and t.dim() > 0:
            dt = torch.promote_types(dt, t.dtype)
    return dt if dt.is_floating_point else torch.float32


def _keeps_x_dtype(x: Tensor, promoted: torch.dtype) -> bool:
    """True under autocast for a half-precision x (autocast's dtype) that the formula's type promotion
    would widen to ``promoted``, on a device whose kernels read x and the parameters mixed: the
    activation then computes in float32 and returns x's dtype, as torch's own activations do. Promoting
    would cost an x -> float32 copy before and a float32 tensor after every site, about 5x the bytes."""
    kind = x.device.type
    return (kind in _MIXED and x.dtype in _HALF and promoted != x.dtype and torch.is_autocast_enabled(kind)
            and x.dtype == torch.get_autocast_dtype(kind))


def try_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float, hard: bool = False) -> Tensor | None:
    """Fused ACON-C, same value and gradients as the reference; None for a call the kernel does not
    take (``can_fuse``), which the caller then runs in plain torch.

    ``hard`` replaces the sigmoid gate by the hard sigmoid ``clamp(u / 6 + 1/2, 0, 1)``. Parameters
    already in the kernel's layout (a module's ``(1, C, 1, 1)`` p1, p2, beta; meta-ACON's ``(N, C, 1, 1)``
    beta) go in as they are: no copy, no extra autograd node per call. Under autocast on CUDA a bf16 or
    fp16 x keeps its dtype, and so does the output (``_keeps_x_dtype``); the parameters keep theirs."""
    plan = _plan(x, p1, p2, beta)
    return None if plan is None else _fused_call(x, p1, p2, beta, hard, *plan)


def _fused_call(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor | float, hard: bool, dt: torch.dtype, mixed: bool) -> Tensor:
    pdt = None if mixed else dt  # the parameters' dtype in the kernel; None: each keeps its own
    xc = x if x.dtype == dt and x.is_contiguous() else x.to(dt).contiguous()
    b, bmode = _beta_layout(beta, xc, pdt)
    args = (xc, _channel_values(p1, xc, pdt), _channel_values(p2, xc, pdt), b, bmode, bool(hard))
    # torch.compile sees the custom op (fake kernel, registered autograd); eager runs the Function. A fake
    # tensor (shape propagation, fx's ShapeProp under FakeTensorMode) has no data for the kernel to read.
    if torch.compiler.is_compiling() or _is_fake(x):
        return _acon_c_op(*args)
    return _AconCFunction.apply(*args)


def _is_fake(x: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(x)


def _channel_values(p: Tensor, x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``p`` as C contiguous values of ``dtype`` (None: p's own): ``p`` itself when it already is."""
    c, dtype = x.shape[1], dtype or p.dtype
    if p.numel() == c and p.dtype == dtype and p.is_contiguous():
        return p
    return p.to(dtype).expand((1, c) + (1,) * (x.dim() - 2)).reshape(c).contiguous()


def _beta_layout(beta: Tensor | float, x: Tensor, dtype: torch.dtype | None) -> tuple[Tensor, int]:
    """beta in a layout the kernels read (contiguous, of ``dtype``; None: beta's own, float32 for a number)
    and which one: per channel, plane or element."""
    n, c = x.shape[0], x.shape[1]
    if not isinstance(beta, Tensor):
        return torch.full((c,), float(beta), dtype=dtype or torch.float32, device=x.device), PER_CHANNEL
    dtype = dtype or beta.dtype
    b = beta if beta.dtype == dtype and beta.is_contiguous() else beta.to(dtype).contiguous()
    s = _padded(beta, x.dim())
    if s == tuple(x.shape):
        return b, PER_ELEMENT
    if _per_plane(beta, x) and s[1] == c:
        return b, PER_CHANNEL if s[0] == 1 else PER_PLANE
    # a beta per sample (layer-wise) or one value: one per plane, summed back by autograd
    return b.expand((n, c) + (1,) * (x.dim() - 2)).reshape(n * c).contiguous(), PER_PLANE
