"""The CPU kernel of the fused ACON-C: C++ source, JIT build with the system compiler, ctypes calls.

The library needs no PyTorch headers, so it builds in about a second and is cached by a hash
of source, flags, compiler and CPU. Where no compiler works, ``load_library`` warns and
returns None, and callers use the reference implementation.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

# -fno-trapping-math lets gcc vectorize the clamps and the float->int step of exp_approx.
FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
NATIVE = ("-march=native",)
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
#: Elements per work item; planes longer than this are split so two threads share one plane.
CHUNK = 8192
#: Below this many elements one thread does the work (OpenMP start-up costs more than it saves).
SERIAL_BELOW = 32768

SOURCE = r"""
#include <cmath>
#include <cstdint>

namespace {

// Cephes-style expf written as plain arithmetic so the compiler vectorizes it inside
// `omp simd` loops (glibc's expf only vectorizes under -ffast-math).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float y = 1.9875691500e-4f;
  y = std::fma(y, r, 1.3981999507e-3f);
  y = std::fma(y, r, 8.3334519073e-3f);
  y = std::fma(y, r, 4.1665795894e-2f);
  y = std::fma(y, r, 1.6666665459e-1f);
  y = std::fma(y, r, 5.0000001201e-1f);
  y = std::fma(y, r * r, r) + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return y * __builtin_bit_cast(float, bits);
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T u) { return T(1) / (T(1) + exp_approx(-u)); }

// One work item is a chunk of one (n, c) plane: p1, p2 are per channel and beta is per
// plane (full == 0) or per element (full == 1).
template <typename T, bool FULL>
void forward_span(const T* __restrict xp, const T* __restrict bp, T d, T q, int64_t len, T* __restrict yp) {
  const T b0 = bp[0];
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const T dx = d * xp[i];
    yp[i] = dx * sigmoid((FULL ? bp[i] : b0) * dx) + q * xp[i];
  }
}

// One work item is a chunk of one (n, c) plane: p1, p2 are per channel and beta is per
// plane (full == 0) or per element (full == 1).
template <typename T>
void forward(const T* x, const T* p1, const T* p2, const T* beta, int full, int64_t C, int64_t HW,
             int64_t chunk, int64_t items, T* y, int threads) {
  const int64_t per_plane = (HW + chunk - 1) / chunk;
  const int64_t grain = chunk >= 8192 ? 1 : 8192 / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, grain)
  for (int64_t w = 0; w < items; ++w) {
    const int64_t plane = w / per_plane, start = (w % per_plane) * chunk;
    const int64_t len = HW - start < chunk ? HW - start : chunk, off = plane * HW + start;
    const int64_t c = plane % C;
    const T d = p1[c] - p2[c], q = p2[c];
    if (full) {
      forward_span<T, true>(x + off, beta + off, d, q, len, y + off);
    } else {
      forward_span<T, false>(x + off, beta + plane, d, q, len, y + off);
    }
  }
}

// One pass: dx, and per item the sums of g*x*t (dp1), g*x (dp1 + dp2) and g*s(1-s)(d x)^2
// (dbeta, per element when full). Sums run in T within a chunk (SIMD lanes make each a sum of at
// most CHUNK / 8 terms); chunks are added in double by the caller, so long planes stay at 1e-5.
template <typename T>
void backward(const T* g, const T* x, const T* p1, const T* p2, const T* beta, int full, int64_t C,
              int64_t HW, int64_t chunk, int64_t items, T* gx, T* gbeta, double* partial, int threads) {
  const int64_t per_plane = (HW + chunk - 1) / chunk;
  const int64_t grain = chunk >= 8192 ? 1 : 8192 / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, grain)
  for (int64_t w = 0; w < items; ++w) {
    const int64_t plane = w / per_plane, start = (w % per_plane) * chunk;
    const int64_t len = HW - start < chunk ? HW - start : chunk, off = plane * HW + start;
    const int64_t c = plane % C;
    const T d = p1[c] - p2[c], q = p2[c];
    const T* xp = x + off;
    const T* gp = g + off;
    T* gxp = gx + off;
    T sa = 0, sb = 0, sc = 0;
    if (full) {
      const T* bp = beta + off;
      T* gbp = gbeta + off;
#pragma omp simd reduction(+ : sa, sb)
      for (int64_t i = 0; i < len; ++i) {
        const T dx = d * xp[i], u = bp[i] * dx, s = sigmoid(u), sp = s * (T(1) - s);
        const T t = s + u * sp, gi = gp[i];
        gxp[i] = gi * (d * t + q);
        sa += (gi * xp[i] * t);
        sb += (gi * xp[i]);
        gbp[i] = gi * sp * dx * dx;
      }
    } else {
      const T b = beta[plane];
#pragma omp simd reduction(+ : sa, sb, sc)
      for (int64_t i = 0; i < len; ++i) {
        const T dx = d * xp[i], u = b * dx, s = sigmoid(u), sp = s * (T(1) - s);
        const T t = s + u * sp, gi = gp[i];
        gxp[i] = gi * (d * t + q);
        sa += (gi * xp[i] * t);
        sb += (gi * xp[i]);
        sc += (gi * sp * dx * dx);
      }
    }
    partial[3 * w] = sa;
    partial[3 * w + 1] = sb;
    partial[3 * w + 2] = sc;
  }
}

}  // namespace

#define ACON_EXPORT(T, SUFFIX)                                                                        \
  extern "C" void acon_c_forward_##SUFFIX(const T* x, const T* p1, const T* p2, const T* beta,        \
                                          int full, int64_t C, int64_t HW, int64_t chunk,             \
                                          int64_t items, T* y, int threads) {                         \
    forward<T>(x, p1, p2, beta, full, C, HW, chunk, items, y, threads);                               \
  }                                                                                                   \
  extern "C" void acon_c_backward_##SUFFIX(const T* g, const T* x, const T* p1, const T* p2,          \
                                           const T* beta, int full, int64_t C, int64_t HW,            \
                                           int64_t chunk, int64_t items, T* gx, T* gbeta,             \
                                           double* partial, int threads) {                            \
    backward<T>(g, x, p1, p2, beta, full, C, HW, chunk, items, gx, gbeta, partial, threads);          \
  }

ACON_EXPORT(float, f32)
ACON_EXPORT(double, f64)
"""


def cache_dir() -> Path:
    """Where built kernels live: ``$ACON_CACHE_DIR`` or ``$XDG_CACHE_HOME/acon`` (``~/.cache/acon``)."""
    if os.environ.get("ACON_CACHE_DIR"):
        return Path(os.environ["ACON_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "acon"


def _cpu_signature() -> str:
    """The CPU's model and flags: ``-march=native`` output must not be reused on another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> bool:
    """Compile ``SOURCE`` into ``target`` atomically (parallel test workers may race); True on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "acon_kernels.cpp", Path(tmp) / target.name
        src.write_text(SOURCE)
        proc = subprocess.run([compiler, *flags, str(src), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            return False
        os.replace(out, target)
    return True


def build(compiler: str | None = None, directory: Path | None = None) -> Path | None:
    """Build (or find in the cache) the kernel library; None, with a warning, where no compiler works."""
    compiler = compiler or os.environ.get("CXX", "g++")
    path = shutil.which(compiler)
    if path is None:
        warnings.warn(f"ACON fused CPU kernels disabled: C++ compiler {compiler!r} not found; using the reference implementation", RuntimeWarning, stacklevel=2)
        return None
    for flags in (FLAGS + NATIVE, FLAGS):
        key = hashlib.sha256("\0".join([SOURCE, path, *flags, platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
        target = (directory or cache_dir()) / f"acon_kernels_{key}.so"
        if target.exists() or _compile(path, flags, target):
            return target
    warnings.warn(f"ACON fused CPU kernels disabled: {compiler!r} failed to build them; using the reference implementation", RuntimeWarning, stacklevel=2)
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare argument types so ctypes passes 64-bit sizes and pointers correctly."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in SUFFIX.values():
        getattr(lib, f"acon_c_forward_{sfx}").argtypes = [p, p, p, p, i32, i64, i64, i64, i64, p, i32]
        getattr(lib, f"acon_c_backward_{sfx}").argtypes = [p, p, p, p, p, i32, i64, i64, i64, i64, p, p, p, i32]
    return lib


@functools.lru_cache(maxsize=None)
def load_library(compiler: str | None = None) -> ctypes.CDLL | None:
    """The loaded kernel library (built once per process and cached on disk), or None."""
    target = build(compiler)
    if target is None:
        return None
    try:
        return _bind(ctypes.CDLL(str(target)))
    except OSError as err:
        warnings.warn(f"ACON fused CPU kernels disabled: cannot load {target}: {err}", RuntimeWarning, stacklevel=2)
        return None


def _layout(x: Tensor, p1: Tensor) -> tuple[int, int, int, int]:
    """(C, HW, chunk, items) for a contiguous channels-first ``x``."""
    C = p1.numel()
    HW = x.numel() // (x.shape[0] * C)
    chunk = min(HW, CHUNK)
    return C, HW, chunk, x.shape[0] * C * (-(-HW // chunk))


def _threads(x: Tensor) -> int:
    return 1 if x.numel() < SERIAL_BELOW else torch.get_num_threads()


def forward(lib: ctypes.CDLL, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """y = ACON-C(x) in one pass; ``beta`` is per plane (1-D, N*C) or per element (x's shape)."""
    y = torch.empty_like(x)
    C, HW, chunk, items = _layout(x, p1)
    fn = getattr(lib, f"acon_c_forward_{SUFFIX[x.dtype]}")
    fn(x.data_ptr(), p1.data_ptr(), p2.data_ptr(), beta.data_ptr(), int(beta.dim() > 1), C, HW, chunk, items, y.data_ptr(), _threads(x))
    return y


def backward(lib: ctypes.CDLL, g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One pass: (dx, per-plane sums (3, N*C) in float64, per-element dbeta or an empty tensor)."""
    C, HW, chunk, items = _layout(x, p1)
    full = beta.dim() > 1
    gx = torch.empty_like(x)
    gbeta = torch.empty_like(x) if full else x.new_empty(0)
    partial = torch.empty(items, 3, dtype=torch.float64)
    fn = getattr(lib, f"acon_c_backward_{SUFFIX[x.dtype]}")
    fn(g.data_ptr(), x.data_ptr(), p1.data_ptr(), p2.data_ptr(), beta.data_ptr(), int(full), C, HW, chunk, items,
       gx.data_ptr(), gbeta.data_ptr() if full else 0, partial.data_ptr(), _threads(x))
    sums = partial.view(-1, items // (x.shape[0] * C), 3).sum(1).t()
    return gx, sums, gbeta
