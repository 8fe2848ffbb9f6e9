"""The CUDA kernel of the fused ACON-C, in Triton: one pass forward, one pass backward.

Tiles are (planes x positions) so both long planes (N, C, H, W) and one-element planes
(N, C) fill the GPU. Half and bfloat16 inputs are computed in float32, float64 in float64.
The backward writes per-tile partial sums; torch adds them, so results are deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TILE = 2048
NUM_WARPS = 4


@triton.jit
def _tile(pid_p, pid_h, P, C, HW, p1, p2, BP: tl.constexpr, BHW: tl.constexpr, CT: tl.constexpr):
    """Rows (planes), their per-channel d = p1 - p2 and p2, element offsets and masks of one tile."""
    rows = pid_p * BP + tl.arange(0, BP)
    cols = pid_h * BHW + tl.arange(0, BHW)
    rmask = rows < P
    mask = rmask[:, None] & (cols < HW)[None, :]
    c = rows % C
    q = tl.load(p2 + c, mask=rmask, other=0).to(CT)
    d = tl.load(p1 + c, mask=rmask, other=0).to(CT) - q
    offs = rows.to(tl.int64)[:, None] * HW + cols[None, :]
    return rows, rmask, mask, d[:, None], q[:, None], offs


# Sizes are not specialized: a new batch size (a study's last batch) must not trigger a new JIT.
@triton.jit(do_not_specialize=["P", "C", "HW"])
def _forward_kernel(x, p1, p2, beta, y, P, C, HW, FULL: tl.constexpr, BP: tl.constexpr, BHW: tl.constexpr, CT: tl.constexpr):
    rows, rmask, mask, d, q, offs = _tile(tl.program_id(0), tl.program_id(1), P, C, HW, p1, p2, BP, BHW, CT)
    xv = tl.load(x + offs, mask=mask, other=0).to(CT)
    if FULL:
        b = tl.load(beta + offs, mask=mask, other=0).to(CT)
    else:
        b = tl.load(beta + rows, mask=rmask, other=0).to(CT)[:, None]
    dx = d * xv
    out = dx / (1 + tl.exp(-(b * dx))) + q * xv
    tl.store(y + offs, out.to(y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["P", "C", "HW"])
def _backward_kernel(g, x, p1, p2, beta, gx, gbeta, partial, P, C, HW,
                     FULL: tl.constexpr, BP: tl.constexpr, BHW: tl.constexpr, CT: tl.constexpr):
    pid_h = tl.program_id(1)
    rows, rmask, mask, d, q, offs = _tile(tl.program_id(0), pid_h, P, C, HW, p1, p2, BP, BHW, CT)
    xv = tl.load(x + offs, mask=mask, other=0).to(CT)
    gv = tl.load(g + offs, mask=mask, other=0).to(CT)
    if FULL:
        b = tl.load(beta + offs, mask=mask, other=0).to(CT)
    else:
        b = tl.load(beta + rows, mask=rmask, other=0).to(CT)[:, None]
    dx = d * xv
    u = b * dx
    s = 1 / (1 + tl.exp(-u))
    sp = s * (1 - s)
    t = s + u * sp
    tl.store(gx + offs, (gv * (d * t + q)).to(gx.dtype.element_ty), mask=mask)
    base = partial + pid_h.to(tl.int64) * 3 * P + rows
    tl.store(base, tl.sum(gv * xv * t, axis=1), mask=rmask)
    tl.store(base + P, tl.sum(gv * xv, axis=1), mask=rmask)
    if FULL:
        tl.store(gbeta + offs, (gv * sp * dx * dx).to(gbeta.dtype.element_ty), mask=mask)
    else:
        tl.store(base + 2 * P, tl.sum(gv * sp * dx * dx, axis=1), mask=rmask)


def _config(x: Tensor, p1: Tensor) -> tuple[int, int, int, int, int, tl.dtype]:
    """(P, C, HW, BP, BHW, compute dtype); block sizes are powers of two covering TILE elements."""
    C = p1.numel()
    P = x.shape[0] * C
    HW = x.numel() // P
    bhw = min(triton.next_power_of_2(HW), TILE)
    ct = tl.float64 if x.dtype == torch.float64 else tl.float32
    return P, C, HW, max(1, TILE // bhw), bhw, ct


def forward(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """y = ACON-C(x); ``beta`` is per plane (1-D, N*C) or per element (x's shape)."""
    y = torch.empty_like(x)
    P, C, HW, bp, bhw, ct = _config(x, p1)
    grid = (triton.cdiv(P, bp), triton.cdiv(HW, bhw))
    _forward_kernel[grid](x, p1, p2, beta, y, P, C, HW, FULL=beta.dim() > 1, BP=bp, BHW=bhw, CT=ct, num_warps=NUM_WARPS)
    return y


def backward(g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, per-plane sums (3, N*C), per-element dbeta or an empty tensor), like the CPU kernel."""
    P, C, HW, bp, bhw, ct = _config(x, p1)
    full = beta.dim() > 1
    grid = (triton.cdiv(P, bp), triton.cdiv(HW, bhw))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial = torch.zeros(grid[1], 3, P, device=x.device, dtype=acc)
    gx = torch.empty_like(x)
    gbeta = torch.empty_like(x) if full else x.new_empty(0)
    _backward_kernel[grid](g, x, p1, p2, beta, gx, gbeta if full else gx, partial, P, C, HW,
                           FULL=full, BP=bp, BHW=bhw, CT=ct, num_warps=NUM_WARPS)
    return gx, partial.sum(0), gbeta
