"""Proof that a fused kernel really ran: ``acon._fused.kernel_calls`` before and after a block.

Without a kernel for the device (no working C++ compiler, no Triton) the test is skipped with the
reason, instead of comparing the reference implementation with itself.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from acon import _fused


def require_kernel(device) -> str:
    """The device type; skip the test where no fused kernel can be built for it."""
    kind = torch.device(device).type
    if _fused.backend(kind) is None:
        why = "no working C++ compiler" if kind == "cpu" else "Triton is not importable"
        pytest.skip(f"fused {kind} kernel unavailable ({why}): nothing fused to test")
    return kind


@contextlib.contextmanager
def kernel_runs(device, passes=("forward", "backward")):
    """Fail unless the device's fused kernel ran for each of ``passes`` inside the block."""
    kind = require_kernel(device)
    before = _fused.kernel_calls()
    yield
    after = _fused.kernel_calls()
    for step in passes:
        key = f"{kind}.{step}"
        assert after.get(key, 0) > before.get(key, 0), f"the fused {key} kernel did not run"
