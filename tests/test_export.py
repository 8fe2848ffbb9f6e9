"""The deployment check: designs export to ONNX and run in onnxruntime with PyTorch's outputs."""
import importlib.util

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the ONNX check needs the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript: pip install -e '.[export]'")

import run_study  # noqa: E402
from acon import _fused  # noqa: E402
from report import export, overhead_table  # noqa: E402


def test_meta_acon_exports_with_the_fused_kernels_on(single_thread):
    with _fused.use_fused(True):  # the check must export the reference formula, not the custom op
        table = overhead_table(["tiny_cnn"], ["channel"], [4], ["all"], input_size=8, num_classes=3,
                               in_channels=1, export="onnx")
    assert table["onnx"].tolist() == ["yes"]
    assert (table["onnx_max_abs_diff"] <= export.TOLERANCE).all()
    assert _fused.fused_enabled()


class _FusedOpInside(nn.Module):
    """Calls the fused ACON-C custom op directly: it runs in PyTorch but has no ONNX form."""

    def forward(self, x):
        one = torch.ones(1, x.shape[1], 1, 1)
        return torch.ops.acon.acon_c_fused(x, one, 0 * one, one, 0, False)  # beta per channel, sigmoid gate


def test_a_design_that_cannot_export_gets_no_and_the_reason():
    out = export.onnx_check(_FusedOpInside(), (1, 3, 2, 2))
    assert out["onnx"].startswith("no: DispatchError: No ONNX function found for <OpOverload(op='acon.acon_c_fused'")
    assert len(out["onnx"].splitlines()) == 1
    assert out["onnx_max_abs_diff"] != out["onnx_max_abs_diff"]  # NaN: nothing was compared


def test_export_flag_errors_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid choices: onnx"):
        overhead_table(["tiny_cnn"], ["channel"], [4], ["all"], export="tflite")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ValueError, match=r"the ONNX check needs onnxruntime: pip install -e '.\[export\]'"):
        overhead_table(["tiny_cnn"], ["channel"], [4], ["all"], export="onnx")


def test_cli_overhead_has_the_onnx_column(capsys, single_thread):
    code = run_study.main(["overhead", "--model", "tiny_cnn", "--generator", "layer", "--r", "4", "--placement", "all",
                           "--input-size", "8", "--format", "csv", "--export", "onnx"])
    out = capsys.readouterr().out
    assert code == 0
    header, row = out.splitlines()[:2]
    assert "onnx" in header.split(",") and ",yes," in row and "relu x4" in row
