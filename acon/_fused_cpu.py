"""The CPU kernel of the fused ACON-C: JIT build of ``_fused_cpu.cpp`` with the system compiler, ctypes calls.

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
#: Elements per work item: longer planes are split (two threads may share one), shorter ones grouped.
CHUNK = 8192
#: Below this many elements one thread does the work (OpenMP start-up costs more than it saves).
SERIAL_BELOW = 32768



def source() -> str:
    """The kernel's C++ source, shipped as package data next to this module."""
    return (Path(__file__).with_name("_fused_cpu.cpp")).read_text()


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


def _compile(compiler: str, flags: tuple[str, ...], target: Path, code: str) -> bool:
    """Compile ``code`` into ``target`` atomically (parallel test workers may race); True on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "acon_kernels.cpp", Path(tmp) / target.name
        src.write_text(code)
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
    code = source()
    for flags in (FLAGS + NATIVE, FLAGS):
        key = hashlib.sha256("\0".join([code, path, *flags, platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
        target = (directory or cache_dir()) / f"acon_kernels_{key}.so"
        if target.exists() or _compile(path, flags, target, code):
            return target
    warnings.warn(f"ACON fused CPU kernels disabled: {compiler!r} failed to build them; using the reference implementation", RuntimeWarning, stacklevel=2)
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare argument types so ctypes passes 64-bit sizes and pointers correctly; keep the functions
    by dtype in ``lib.kernels`` (a lookup per call, not an attribute search and a string)."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.kernels = {}
    for dtype, sfx in SUFFIX.items():
        fwd, bwd = getattr(lib, f"acon_c_forward_{sfx}"), getattr(lib, f"acon_c_backward_{sfx}")
        fwd.argtypes = [p, p, p, p, i32, i64, i64, i64, i64, p, i32, i32]
        bwd.argtypes = [p, p, p, p, p, i32, i64, i64, i64, i64, p, p, p, p, i32, i32]
        lib.kernels[dtype] = (fwd, bwd)
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


def _sizes(x: Tensor, p1: Tensor) -> tuple[int, int, int, int]:
    """(P planes, C, HW, threads) for a contiguous channels-first ``x``."""
    C = p1.numel()
    P = x.shape[0] * C
    return P, C, x.numel() // P, 1 if x.numel() < SERIAL_BELOW else torch.get_num_threads()


def forward(lib: ctypes.CDLL, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int, hard: bool = False) -> Tensor:
    """y = ACON-C(x) in one pass. Every tensor contiguous, p1/p2 with C values, ``beta`` per channel
    (``bmode`` 0), per plane (1) or per element (2); ``hard`` selects the hard-sigmoid gate."""
    y = torch.empty_like(x)
    P, C, HW, threads = _sizes(x, p1)
    lib.kernels[x.dtype][0](x.data_ptr(), p1.data_ptr(), p2.data_ptr(), beta.data_ptr(), bmode, P, C, HW, CHUNK,
                            y.data_ptr(), threads, int(hard))
    return y


def backward(lib: ctypes.CDLL, g: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, bmode: int,
             hard: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One pass: (dx, dp1, dp2, dbeta), each shaped like its input; the sums run in double."""
    P, C, HW, threads = _sizes(x, p1)
    gx, dp1, dp2, dbeta = torch.empty_like(x), torch.empty_like(p1), torch.empty_like(p2), torch.empty_like(beta)
    lib.kernels[x.dtype][1](g.data_ptr(), x.data_ptr(), p1.data_ptr(), p2.data_ptr(), beta.data_ptr(), bmode, P, C, HW,
                            CHUNK, gx.data_ptr(), dp1.data_ptr(), dp2.data_ptr(), dbeta.data_ptr(), threads, int(hard))
    return gx, dp1, dp2, dbeta
