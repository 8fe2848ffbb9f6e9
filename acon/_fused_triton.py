"""The CUDA kernel of the fused ACON-C, in Triton: one pass forward, one pass backward.

Tiles are (planes x positions) so both long planes (N, C, H, W) and one-element planes
(N, C) fill the GPU. Tile size and warps are autotuned per plane length and dtype. Half and
bfloat16 inputs are computed and accumulated in float32, float64 in float64; parameters may
have another dtype than x (float32 parameters with a bf16 x under autocast). The backward's
program walks its planes from end to end and writes their three sums itself: one launch, no
partial sums for another, and a fixed order of addition, so results are deterministic.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
from torch import Tensor

#: Elements per tile and warps tried by the autotuner; the tile's width follows the plane length.
TILES = (1024, 2048, 4096)
WARPS = (2, 4, 8)
_WIDTHS = tuple(2**k for k in range(13))  # 1 .. 4096 positions per tile row


def _width(hw: int, tile: int) -> int:
    """Positions per tile row: the plane length rounded up to a power of two, at most the tile."""
    return min(triton.next_power_of_2(hw), tile)


def _configs() -> list[triton.Config]:
    return [triton.Config({"BP": max(1, tile // bhw), "BHW": bhw}, num_warps=w)
            for tile, bhw, w in itertools.product(TILES, _WIDTHS, WARPS) if bhw <= tile]


def _prune(configs, named_args, **kwargs):
    """Keep, for each tile size, the one row width that fits this plane length."""
    hw = named_args["HW"]
    return [c for c in configs if any(c.kwargs["BHW"] == _width(hw, t) and c.kwargs["BP"] == max(1, t // c.kwargs["BHW"])
                                      for t in TILES)]


@triton.jit
def _tile(pid_p, col0, P, C, HW, p1, p2, BP: tl.constexpr, BHW: tl.constexpr, CT: tl.constexpr):
    """Rows (planes), their per-channel d = p1 - p2 and p2, element offsets and masks of the tile
    of planes ``pid_p`` starting at position ``col0``."""
    rows = pid_p * BP + tl.arange(0, BP)
    cols = col0 + tl.arange(0, BHW)
    rmask = rows < P
    mask = rmask[:, None] & (cols < HW)[None, :]
    c = rows % C
    q = tl.load(p2 + c, mask=rmask, other=0).to(CT)
    d = tl.load(p1 + c, mask=rmask, other=0).to(CT) - q
    offs = rows.to(tl.int64)[:, None] * HW + cols[None, :]
    return rows, rmask, mask, d[:, None], q[:, None], offs


@triton.jit
def _x_and_beta(x, beta, rows, rmask, mask, offs, C, FULL: tl.constexpr, CHANNEL: tl.constexpr, CT: tl.constexpr):
    """x and beta of one tile in the compute dtype: beta per element, or one value per row (plane),
    read per channel (``CHANNEL``: a module's learned beta, no copy per sample) or per plane."""
    xv = tl.load(x + offs, mask=mask, other=0).to(CT)
    if FULL:
        b = tl.load(beta + offs, mask=mask, other=0).to(CT)
    elif CHANNEL:
        b = tl.load(beta + rows % C, mask=rmask, other=0).to(CT)[:, None]
    else:
        b = tl.load(beta + rows, mask=rmask, other=0).to(CT)[:, None]
    return xv, b


@triton.jit
def _gate(u, HARD: tl.constexpr):
    """(s, s'): the sigmoid, or the hard sigmoid clamp(u / 6 + 1/2, 0, 1) with slope 1/6 inside (-3, 3)."""
    if HARD:
        s = tl.minimum(tl.maximum(u * (1.0 / 6.0) + 0.5, 0.0), 1.0)
        sp = tl.where((u > -3.0) & (u < 3.0), 1.0 / 6.0, 0.0)
    else:
        s = 1 / (1 + tl.exp(-u))
        sp = s * (1 - s)
    return s, sp


_TUNE = dict(configs=_configs(), key=["HW", "FULL", "HARD"], prune_configs_by={"early_config_prune": _prune})


# Sizes are not specialized: a new batch size (a study's last batch) must not trigger a new JIT.
@triton.autotune(**_TUNE)
@triton.jit(do_not_specialize=["P", "C", "HW"])
def _forward_kernel(x, p1, p2, beta, y, P, C, HW, FULL: tl.constexpr, CHANNEL: tl.constexpr, HARD: tl.constexpr,
                    CT: tl.constexpr, BP: tl.constexpr, BHW: tl.constexpr):
    rows, rmask, mask, d, q, offs = _tile(tl.program_id(0), tl.program_id(1) * BHW, P, C, HW, p1, p2, BP, BHW, CT)
    xv, b = _x_and_beta(x, beta, rows, rmask, mask, offs, C, FULL, CHANNEL, CT)
    dx = d * xv
    s, _ = _gate(b * dx, HARD)
    tl.store(y + offs, (dx * s + q * xv).to(y.dtype.element_ty), mask=mask)


@triton.autotune(**_TUNE)
@triton.jit(do_not_specialize=["P", "C", "HW"])
def _backward_kernel(g, x, p1, p2, beta, gx, gbeta, sums, P, C, HW,
                     FULL: tl.constexpr, CHANNEL: tl.constexpr, HARD: tl.constexpr, CT: tl.constexpr, BP: tl.constexpr,
                     BHW: tl.constexpr):
    # One program per BP planes, walking their positions BHW at a time: dx (and per-element dbeta)
    # on the way, the planes' sums (dp1, dp2 and dbeta per plane) written once at the end.
    pid = tl.program_id(0)
    sum_xt = tl.zeros([BP], dtype=CT)
    sum_x1t = tl.zeros([BP], dtype=CT)
    sum_beta = tl.zeros([BP], dtype=CT)
    for col0 in range(0, HW, BHW):
        rows, rmask, mask, d, q, offs = _tile(pid, col0, P, C, HW, p1, p2, BP, BHW, CT)
        xv, b = _x_and_beta(x, beta, rows, rmask, mask, offs, C, FULL, CHANNEL, CT)
        gv = tl.load(g + offs, mask=mask, other=0).to(CT)
        dx = d * xv
        u = b * dx
        s, sp = _gate(u, HARD)
        t = s + u * sp
        tl.store(gx + offs, (gv * (d * t + q)).to(gx.dtype.element_ty), mask=mask)
        sum_xt += tl.sum(gv * xv * t, axis=1)
        sum_x1t += tl.sum(gv * xv * (1 - t), axis=1)
        if FULL:
            tl.store(gbeta + offs, (gv * sp * dx * dx).to(gbeta.dtype.element_ty), mask=mask)
        else:
            sum_beta += tl.sum(gv * sp * dx * dx, axis=1)
    rows = pid * BP + tl.arange(0, BP)
    rmask = rows < P
    tl.store(sums + rows, sum_xt, mask=rmask)
    tl.store(sums + P + rows, sum_x1t, mask=rmask)
    tl.store(sums + 2 * P + rows, sum_beta, mask=rmask)  # zeros for a per-element beta


def _sizes(x: Tensor, p1: Tensor) -> tuple[int, int, int, tl.dtype]:
    """(P, C, HW, compute dtype): float32 for half and bfloat16 inputs, float64 for float64."""
    C = p1.numel()
    P = x.shape[0] * C
    ct = tl.float64 if x.dtype == torch.float64 else tl.float32
    return P, C, x.numel() // P, ct


def _grid(P: int, HW: int):
    return lambda meta: (triton.cdiv(P, meta["BP"]), triton.cdiv(HW, meta["BHW"]))


def _planes_grid(P: int):
    return lambda meta: (triton.cdiv(P, meta["BP"]),)


def _beta_kind(beta: Tensor, C: int) -> dict[str, bool]:
    """The kernels' beta switches: per element (x's shape), per channel (C values) or per plane (N*C)."""
    return {"FULL": beta.dim() > 1, "CHANNEL": beta.dim() == 1 and beta.numel() == C}


def forward(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, hard: bool = False) -> Tensor:
    """y = ACON-C(x); ``beta`` is per channel (1-D, C), per plane (1-D, N*C) or per element (x's shape)."""
    y = torch.empty_like(x)
    P, C, HW, ct = _sizes(x, p1)
    _forward_kernel[_grid(P, HW)](x, p1, p2, beta, y, P, C, HW, **_beta_kind(beta, C), HARD=bool(hard), CT=ct)
    return y


def backward(g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, hard: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, per-plane sums (3, N*C): dp1, dp2, dbeta, per-element dbeta or an empty tensor); beta as
    ``forward`` takes it."""
    P, C, HW, ct = _sizes(x, p1)
    full = beta.dim() > 1
    sums = torch.empty(3, P, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    gx = torch.empty_like(x)
    gbeta = torch.empty_like(x) if full else x.new_empty(0)
    _backward_kernel[_planes_grid(P)](g, x, p1, p2, beta, gx, gbeta if full else gx, sums, P, C, HW,
                                      **_beta_kind(beta, C), HARD=bool(hard), CT=ct)
    return gx, sums, gbeta
