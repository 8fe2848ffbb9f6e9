"""A whole study on CUDA, end to end: ``run`` (training on the GPU, the fused Triton kernels, both
gates) then ``report``. Tiny; skipped without CUDA. Also runnable as a script where pytest is missing
(the GPU machine's image): ``python tests/test_cuda.py``."""
from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 2, "seeds": 1, "batch_size": 64}
DESIGNS = ({"activation": "relu", "placement": "all"},
           {"activation": "meta_acon", "generator": "channel", "r": 4, "placement": "all"},
           {"activation": "meta_acon", "generator": "channel", "r": 4, "placement": "all", "gate": "hard_sigmoid"})


def test_study_runs_on_cuda_with_fused_kernels_then_reports(tmp_path):
    study_end_to_end(tmp_path, "cuda")


def study_end_to_end(tmp_path, device: str) -> None:
    """Run the tiny study on ``device`` (its fused kernels must run) and build its report."""
    import mlflow

    from acon import _fused
    from report.build import build_report
    from studies.run.options import RunOptions
    from studies.run.launch import run_study
    from studies.spec import Study

    before = _fused.kernel_calls()
    study = Study(name="cuda-e2e", doc="tiny CUDA end-to-end study", designs=DESIGNS, fixed=dict(TINY))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_study(study, RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=uri,
                                         progress=False, device=device))
    assert result.counts == {"COMPLETE": len(DESIGNS)}
    after = _fused.kernel_calls()
    for step in ("forward", "backward"):
        assert after.get(f"{device}.{step}", 0) > before.get(f"{device}.{step}", 0), f"the fused {device} {step} kernel never ran"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cuda-e2e"])
    trials = runs[runs["tags.acon.role"] == "trial"]
    assert len(trials) == len(DESIGNS) and all(math.isfinite(v) for v in trials["metrics.final_val_acc"])
    text = build_report("cuda-e2e", tracking_uri=uri, log_to_mlflow=False)
    assert "meta_acon" in text and "hard_sigmoid" in text


def test_fused_kernels_match_the_reference_on_cuda_in_bf16_and_fp32():
    from acon import functional as F

    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for gate in ("sigmoid", "hard_sigmoid"):
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(8, 16, 28, 28, device="cuda", generator=g).to(dtype).requires_grad_()
            p1, p2 = (torch.randn(1, 16, 1, 1, device="cuda", generator=g).to(dtype).requires_grad_() for _ in range(2))
            beta = torch.rand(8, 16, 1, 1, device="cuda", generator=g).to(dtype).requires_grad_()
            up = torch.randn_like(x)
            got = [F.acon_c(x, p1, p2, beta, gate)] + list(torch.autograd.grad(F.acon_c(x, p1, p2, beta, gate), (x, p1, p2, beta), up))
            ref = [t.detach().double().requires_grad_() for t in (x, p1, p2, beta)]
            want = [F.acon_c_reference(*ref, gate)] + list(torch.autograd.grad(F.acon_c_reference(*ref, gate), ref, up.double()))
            for a, b in zip(got, want):
                scale = b.abs().max().item() or 1.0  # per-channel sums grow with the plane count
                torch.testing.assert_close(a.double() / scale, b / scale, rtol=tol, atol=tol)


def test_under_autocast_the_fused_activation_returns_bf16_and_matches_the_formula():
    from acon import _fused
    from acon.modules import MetaAconC

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1).cuda()
    x = torch.randn(8, 16, 28, 28, device="cuda")
    outputs = []
    for fused in (True, False):
        torch.manual_seed(1)
        act = MetaAconC(16, r=4).cuda()
        before = _fused.kernel_calls().get("cuda.forward", 0)
        with _fused.use_fused(fused), torch.autocast("cuda", dtype=torch.bfloat16):
            y = act(conv(x))
        assert (_fused.kernel_calls().get("cuda.forward", 0) > before) == fused
        y.float().sum().backward()
        outputs.append((y, act.p1.grad))
    (y, g), (y_ref, g_ref) = outputs
    # no float32 copy of x, no float32 output: the site costs a bf16 read and a bf16 write, like SiLU's
    assert y.dtype == torch.bfloat16 and y_ref.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=2e-2)


if __name__ == "__main__":  # no pytest on the GPU machine: run each test with a temporary folder
    import sys
    import tempfile
    from pathlib import Path

    if not torch.cuda.is_available():
        print("SKIPPED: needs CUDA")
        sys.exit(0)
    failed = 0
    for name, fn in [(k, v) for k, v in dict(globals()).items() if k.startswith("test_")]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fn(Path(tmp)) if "tmp_path" in fn.__code__.co_varnames[:fn.__code__.co_argcount] else fn()
                print(f"PASSED {name}")
            except Exception as e:  # report and go on: one summary line per test
                failed += 1
                print(f"FAILED {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
