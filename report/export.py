"""Deployment check: does a design export to ONNX and give the same outputs in onnxruntime?

Needs the optional extra (``pip install -e '.[export]'``: onnx, onnxruntime, onnxscript). The
model is exported with the fused ACON kernels off: the fused custom op has no ONNX form, and the
reference formula computes the same function.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re

import torch
from torch import nn

from acon import _fused
from report.errors import ReportError

#: Largest absolute difference between PyTorch and onnxruntime outputs that still counts as the same.
TOLERANCE = 1e-4
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require_export_extra() -> None:
    """Refuse (one line) when the packages of the ``export`` extra are missing."""
    missing = [p for p in EXPORT_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ReportError(f"the ONNX check needs {', '.join(missing)}: pip install -e '.[export]'")


def onnx_check(model: nn.Module, input_shape, *, tolerance: float = TOLERANCE) -> dict:
    """Export ``model`` with ``torch.onnx.export``, run it in onnxruntime on one random input and
    compare with PyTorch's output: ``{"onnx": "yes" | "no: why", "onnx_max_abs_diff": float}``."""
    require_export_extra()
    x = torch.randn(tuple(input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _fused.use_fused(False):
            expected = model(x)
            ours = _run_in_onnxruntime(_export(model, x), x)
    except Exception as e:  # exporters and runtimes raise many types; the row says which and why
        return {"onnx": f"no: {_reason(e)}", "onnx_max_abs_diff": float("nan")}
    finally:
        model.train(was_training)
    diff = float((torch.from_numpy(ours) - expected).abs().max())
    verdict = "yes" if diff <= tolerance else f"no: outputs differ by {diff:.2g} > {tolerance:g}"
    return {"onnx": verdict, "onnx_max_abs_diff": diff}


def _export(model: nn.Module, x: torch.Tensor) -> bytes:
    """The ONNX model as bytes (the exporter's progress lines are swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def _run_in_onnxruntime(onnx_model: bytes, x: torch.Tensor):
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _reason(e: BaseException) -> str:
    """The root cause's type and first line: the exporter wraps the useful error in generic ones."""
    while e.__cause__ is not None:
        e = e.__cause__
    line = (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"
