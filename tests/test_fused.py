"""The fused ACON-C kernels match the reference (values and every gradient), for both gates, keep
little for backward, fall back with a warning, and survive fx tracing, torch.compile and autocast.
Every "fused" case asserts that the kernel ran (``kernel_runs``) and skips where none can be built.
Without a GPU, the CUDA path's Triton kernels still run here: Triton's interpreter executes them on CPU
tensors (``test_triton_kernels_under_the_interpreter``)."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from acon import _fused, _fused_cpu
from acon import functional as F
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC
from acon.beta import LayerBeta, PixelBeta
from _kernels import kernel_runs, require_kernel

#: Where the kernel tests run: the C++ kernel; CUDA where present; and, in a process started with
#: TRITON_INTERPRET=1 (``test_triton_kernels_under_the_interpreter`` starts one), the Triton kernels run
#: by Triton's interpreter on CPU tensors: the CUDA path's tiling, arithmetic and glue, without a GPU.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
KERNELS = ["cpu"] + (["triton-interpreted"] if INTERPRETED else []) + (["cuda"] if torch.cuda.is_available() else [])
N, C, H, W = 3, 5, 4, 6
LAYOUTS = ("channel_learned", "channel_meta", "layer", "pixel")


def _beta_shape(layout, shape=(N, C, H, W)):
    """The beta shape a module passes for ``layout`` (see acon.modules / acon.beta)."""
    n, c, rest = shape[0], shape[1], (1,) * (len(shape) - 2)
    return {"channel_learned": (1, c) + rest, "channel_meta": (n, c) + rest, "layer": (n, 1) + rest, "pixel": tuple(shape)}[layout]


def _inputs(device, dtype, beta_shape, x_shape=(N, C, H, W)):
    g = torch.Generator().manual_seed(0)
    pshape = (1, x_shape[1]) + (1,) * (len(x_shape) - 2)
    x, p1, p2 = (torch.randn(s, generator=g, dtype=dtype) for s in (x_shape, pshape, pshape))
    beta = torch.randn(beta_shape, generator=g, dtype=dtype) if beta_shape is not None else 0.7
    leaves = [x, p1, p2] + ([beta] if beta_shape is not None else [])
    leaves = [t.to(device).requires_grad_() for t in leaves]
    return leaves if beta_shape is not None else leaves + [0.7]


def _value_and_grads(fn, x, p1, p2, beta, g):
    y = fn(x, p1, p2, beta)
    wrt = [t for t in (x, p1, p2, beta) if isinstance(t, torch.Tensor)]
    return [y] + list(torch.autograd.grad(y, wrt, g))


def _run_once(kernel_call, quantiles):
    """The autotuner's timer under the interpreter (no GPU driver to time with): run, report a tie."""
    kernel_call()
    return [1.0] * len(quantiles)


@pytest.fixture(scope="module")
def interpreted_triton():
    """``acon._fused_triton`` with kernels that Triton's interpreter runs on CPU tensors. It checks
    what the kernels compute, not how the compiled code behaves (that is ``test_cuda``, on a GPU)."""
    pytest.importorskip("triton")
    from acon import _fused_triton

    for kernel in (_fused_triton._forward_kernel, _fused_triton._backward_kernel):
        kernel.do_bench = _run_once
        # one config per shape: the interpreter runs each tuning candidate in full (1-2 s a call);
        # the tuner itself and every tile have their own tests
        kernel.early_config_prune = lambda configs, nargs, **kw: _fused_triton._prune(configs, nargs)[:1]
    return _fused_triton


@pytest.fixture(params=KERNELS)
def device(request, monkeypatch):
    """The device string a kernel test runs on; "triton-interpreted" is "cpu" with the interpreted
    Triton kernels, behind the same adapter as on CUDA, as the CPU backend."""
    if request.param != "triton-interpreted":
        return request.param
    triton_kernels = request.getfixturevalue("interpreted_triton")
    monkeypatch.setitem(_fused._BACKENDS, "cpu", _fused._PlaneBackend(triton_kernels.forward, triton_kernels.backward))
    # what the Triton kernels take on CUDA: half inputs, and under autocast a half x with float32 parameters
    monkeypatch.setitem(_fused._DTYPES, "cpu", _fused._DTYPES["cuda"])
    monkeypatch.setattr(_fused, "_MIXED", _fused._MIXED | {"cpu"})
    return "cpu"


@pytest.fixture(autouse=True)
def _fused_on():
    with _fused.use_fused(True):
        yield


@pytest.mark.parametrize("layout", LAYOUTS + ("python_float",))
def test_fused_matches_reference_value_and_grads(device, layout):
    x, p1, p2, beta = _inputs(device, torch.float32, None if layout == "python_float" else _beta_shape(layout))
    assert _fused.can_fuse(x, p1, p2, beta)
    g = torch.randn_like(x)
    with kernel_runs(device):
        got = _value_and_grads(F.acon_c, x, p1, p2, beta, g)
    want = _value_and_grads(F.acon_c_reference, x, p1, p2, beta, g)
    assert len(got) == len(want) == (5 if layout != "python_float" else 4)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape", [(4, 7), (2, 3, 9), (2, 3, 40000)])
def test_fused_matches_reference_on_other_ranks_and_long_planes(device, x_shape):
    # (2, 3, 40000) splits each plane into several work items on CPU and tiles on CUDA.
    x, p1, p2, beta = _inputs(device, torch.float32, (x_shape[0], x_shape[1]) + (1,) * (len(x_shape) - 2), x_shape)
    g = torch.randn_like(x)
    with kernel_runs(device):
        got = _value_and_grads(F.acon_c, x, p1, p2, beta, g)
    exact = [t.detach().double().requires_grad_() for t in (x, p1, p2, beta)]
    truth = _value_and_grads(F.acon_c_reference, *exact, g.double())
    # sums over 80,000 float32 terms are exact only to ~1e-5 of their scale (the reference's too),
    # so per-channel gradients are held to the float64 truth with atol 1e-4
    for a, t in zip(got, truth):
        torch.testing.assert_close(a.double(), t, rtol=1e-5, atol=1e-4 if t.numel() < x.numel() else 1e-5)


def test_fused_accepts_a_non_contiguous_movedim_view(device):
    x, p1, p2, beta = _inputs(device, torch.float32, (1, C, 1, 1))
    xv = x.detach().movedim(1, 3).contiguous().movedim(3, 1).requires_grad_()
    assert not xv.is_contiguous()
    with kernel_runs(device, ("forward",)):
        y = F.acon_c(xv, p1, p2, beta)
    torch.testing.assert_close(y, F.acon_c_reference(x, p1, p2, beta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_gradcheck_float64(device, layout):
    x, p1, p2, beta = _inputs(device, torch.float64, _beta_shape(layout, (2, 3, 2, 3)), (2, 3, 2, 3))
    with kernel_runs(device):
        assert torch.autograd.gradcheck(F.acon_c, (x, p1, p2, beta))


def test_acon_a_and_b_match_reference(device):
    x, p1, _, beta = _inputs(device, torch.float32, (1, C, 1, 1))
    g = torch.randn_like(x)
    for fused, ref, args in [(F.acon_a, F.acon_a_reference, (x, beta)), (F.acon_b, F.acon_b_reference, (x, p1, beta))]:
        with kernel_runs(device):
            got = torch.autograd.grad(fused(*args), args, g)
        want = torch.autograd.grad(ref(*args), args, g)
        torch.testing.assert_close(fused(*args), ref(*args), rtol=1e-5, atol=1e-5)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _saved_bytes(fn, *args) -> int:
    """Bytes of every tensor autograd keeps for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total[0]


@pytest.mark.parametrize("layout", ["channel_learned", "channel_meta", "layer"])
def test_fused_keeps_only_input_and_small_tensors_for_backward(layout):
    x, p1, p2, beta = _inputs("cpu", torch.float32, _beta_shape(layout, (2, 4, 16, 16)), (2, 4, 16, 16))
    small = 4 * (3 * 2 * 4 + 2 * 4)  # generous: per-channel and per-plane float32 tensors
    fused = _saved_bytes(F.acon_c, x, p1, p2, beta)
    assert x.numel() * 4 <= fused <= x.numel() * 4 + small
    assert _saved_bytes(F.acon_c_reference, x, p1, p2, beta) >= 3 * x.numel() * 4


def test_pixel_beta_gradient_flows_back_through_the_generator():
    torch.manual_seed(0)
    mod = MetaAcon(C, PixelBeta(C))
    x = torch.randn(N, C, H, W, requires_grad=True)
    with kernel_runs("cpu"):
        (gx,) = torch.autograd.grad(mod(x).sum(), x)
    with _fused.use_fused(False):
        (want,) = torch.autograd.grad(mod(x).sum(), x)
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-5)


def test_missing_compiler_warns_and_builds_nothing(tmp_path):
    with pytest.warns(RuntimeWarning, match="compiler 'no-such-c\\+\\+' not found"):
        assert _fused_cpu.build(compiler="no-such-c++", directory=tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_kernel_source_is_package_data_and_part_of_the_build_key(tmp_path, monkeypatch):
    import tomllib
    
    root = Path(_fused_cpu.__file__).parents[1]
    shipped = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["acon"]
    assert "_fused_cpu.cpp" in shipped and "extern \"C\"" in _fused_cpu.source()
    require_kernel("cpu")
    first = _fused_cpu.build(directory=tmp_path)
    monkeypatch.setattr(_fused_cpu, "source", lambda: _fused_cpu.Path(_fused_cpu.__file__).with_name("_fused_cpu.cpp").read_text() + "\n// edited\n")
    second = _fused_cpu.build(directory=tmp_path)
    assert first is not None and second is not None and first != second


def test_disabled_fused_path_runs_the_reference():
    require_kernel("cpu")
    x, p1, p2, beta = _inputs("cpu", torch.float32, (1, C, 1, 1))
    with _fused.use_fused(False):
        assert not _fused.can_fuse(x, p1, p2, beta)
        y = F.acon_c(x, p1, p2, beta)
    # the reference graph ends in the formula's final add, the fused one in the kernel's node
    assert y.grad_fn.name() == "AddBackward0"
    assert F.acon_c(x, p1, p2, beta).grad_fn.name() == "_AconCFunctionBackward"
    torch.testing.assert_close(F.acon_c(x, p1, p2, beta), y, rtol=1e-5, atol=1e-5)


def test_unbuildable_backend_falls_back_to_reference(monkeypatch):
    monkeypatch.setattr(_fused, "_BACKENDS", {"cpu": None})
    x, p1, p2, beta = _inputs("cpu", torch.float32, (1, C, 1, 1))
    assert not _fused.can_fuse(x, p1, p2, beta)
    torch.testing.assert_close(F.acon_c(x, p1, p2, beta), F.acon_c_reference(x, p1, p2, beta))


MODULES = {
    "acon_a": lambda: AconA(C),
    "acon_b": lambda: AconB(C),
    "acon_c": lambda: AconC(C),
    "meta_channel": lambda: MetaAconC(C, r=1),
    "meta_layer": lambda: MetaAcon(C, LayerBeta(C)),
    "meta_pixel": lambda: MetaAcon(C, PixelBeta(C)),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_survive_fx_symbolic_trace(name):
    torch.manual_seed(0)
    mod = MODULES[name]().eval()
    traced = torch.fx.symbolic_trace(mod)
    x = torch.randn(N, C, H, W)
    with kernel_runs("cpu", ("forward",)):
        torch.testing.assert_close(traced(x), mod(x))
    with _fused.use_fused(False):
        torch.testing.assert_close(traced(x), mod(x), rtol=1e-5, atol=1e-5)


def test_module_output_finite_under_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(C, C, 3, padding=1).to(device)
    act = MetaAconC(C, r=1).to(device)
    x = torch.randn(N, C, H, W, device=device)
    with torch.autocast(device_type=device, dtype=dtype):
        y = act(conv(x))
    y.float().sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(act.p1.grad).all() and act.p1.grad.abs().sum() > 0


def test_under_autocast_a_half_input_keeps_its_dtype_where_the_kernel_reads_it_mixed(device):
    # bf16 autocast: the conv hands the activation a bf16 x; the parameters stay float32. The formula's
    # type promotion makes its output float32; the kernels that read x and parameters mixed return bf16.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(C, C, 3, padding=1).to(device)
    x = torch.randn(N, C, H, W, device=device)
    mixed = device in _fused._MIXED and torch.bfloat16 in _fused._DTYPES[device] and _fused.backend(device) is not None
    for make in (lambda: AconC(C), lambda: MetaAconC(C, r=1)):
        results = []
        for fused in (True, False):
            torch.manual_seed(1)
            act = make().to(device)
            with _fused.use_fused(fused), torch.autocast(device_type=device, dtype=torch.bfloat16):
                h = conv(x).detach().requires_grad_()
                y = act(h)
            assert h.dtype == torch.bfloat16 and act.p1.dtype == torch.float32
            y.float().sum().backward()
            results.append((y, h.grad, act.p1.grad, act.p2.grad))
        (y, *grads), (y_ref, *grads_ref) = results
        assert y_ref.dtype == torch.float32 and y.dtype == (torch.bfloat16 if mixed else torch.float32)
        # one rounding of the output, and of dx, to bf16 (8-bit mantissa)
        torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
        for a, b in zip(grads, grads_ref):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_module_under_torch_compile_matches_eager_and_keeps_one_graph_across_batch_sizes():
    torch.manual_seed(0)
    torch._dynamo.reset()
    mod = AconC(C)
    # aot_eager traces forward and backward through the op's fake kernels and registered autograd
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(mod, backend=counter, dynamic=True)
    with kernel_runs("cpu"):
        for n in (3, 4, 5):
            x = torch.randn(n, C, H, W, requires_grad=True)
            y = compiled(x)
            torch.testing.assert_close(y, F.acon_c_reference(x, mod.p1, mod.p2, mod.beta), rtol=1e-5, atol=1e-5)
            y.sum().backward()
    assert counter.frame_count == 1


def test_acon_fused_env_var_zero_turns_the_fused_path_off():
    code = "from acon import _fused; print(_fused.fused_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ACON_FUSED": "0"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# The hard-sigmoid gate: clamp(u / 6 + 1/2, 0, 1) in place of sigmoid(u).


def _away_from_kinks(x, p1, p2, beta, margin=0.05):
    """Move x so no |beta (p1 - p2) x| lies within ``margin`` of the hard sigmoid's kinks at 3."""
    with torch.no_grad():
        d = p1 - p2
        u = (beta if isinstance(beta, torch.Tensor) else torch.tensor(beta)) * d * x
        near = ((u.abs() - 3).abs() < margin)
        x.add_(torch.where(near, 4 * margin * torch.sign(u) / (beta * d), torch.zeros_like(x)))
        u = beta * d * x
    assert ((u.abs() - 3).abs() >= margin / 2).all()
    return u


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hard_sigmoid_gate_matches_the_reference_formula_value_and_grads(device, layout):
    x, p1, p2, beta = _inputs(device, torch.float32, _beta_shape(layout))
    with torch.no_grad():
        x.mul_(3)  # reach both the clamped and the linear part of the gate
    u = _away_from_kinks(x, p1, p2, beta)
    assert (u.abs() < 3).any() and (u.abs() > 3).any()
    g = torch.randn_like(x)
    with kernel_runs(device):
        got = _value_and_grads(lambda *a: F.acon_c(*a, gate="hard_sigmoid"), x, p1, p2, beta, g)
    # the formula written out, independent of F.acon_c_reference
    dx = (p1 - p2) * x
    want = _value_and_grads(lambda x, p1, p2, beta: dx * torch.clamp(beta * dx / 6 + 0.5, 0, 1) + p2 * x, x, p1, p2, beta, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the gate really differs from the sigmoid's
    assert not torch.allclose(got[0], F.acon_c_reference(x, p1, p2, beta), atol=1e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hard_sigmoid_gate_gradcheck_float64_away_from_the_kinks(device, layout):
    shape = (2, 3, 2, 3)
    x, p1, p2, beta = _inputs(device, torch.float64, _beta_shape(layout, shape), shape)
    with torch.no_grad():
        x.mul_(4)
    u = _away_from_kinks(x, p1, p2, beta, margin=0.1)
    assert (u.abs() < 3).any() and (u.abs() > 3).any()
    with kernel_runs(device):
        assert torch.autograd.gradcheck(lambda *a: F.acon_c(*a, gate="hard_sigmoid"), (x, p1, p2, beta))


@pytest.mark.parametrize("hard", [False, True], ids=["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout", ["channel_learned", "channel_meta", "pixel"])
@pytest.mark.parametrize("x_shape", [(N, C, H, W), (N, C)], ids=["planes", "2d"])
def test_closed_form_fallback_passes_match_the_cpu_kernel(layout, hard, x_shape):
    kernels = _fused.backend(require_kernel("cpu"))
    x, p1, p2, beta = (t.detach() for t in _inputs("cpu", torch.float32, _beta_shape(layout, x_shape), x_shape))
    b, bmode = _fused._beta_layout(beta, x, x.dtype)
    assert bmode == {"channel_learned": _fused.PER_CHANNEL, "channel_meta": _fused.PER_PLANE,
                     "pixel": _fused.PER_ELEMENT}[layout] or len(x_shape) == 2
    args, g = (x * 3, p1, p2, b, bmode, hard), torch.randn_like(x)
    torch.testing.assert_close(_fused._CLOSED_FORM.forward(*args), kernels.forward(*args))
    for a, k, like in zip(_fused._CLOSED_FORM.backward(g, *args), kernels.backward(g, *args), (x, p1, p2, b)):
        assert a.shape == k.shape == like.shape
        torch.testing.assert_close(a, k, rtol=1e-5, atol=1e-5)


def test_parameters_in_the_kernel_layout_go_in_as_they_are():
    """A module's p1, p2 and beta, and meta-ACON's per-plane beta, need no copy and no autograd node."""
    x = torch.randn(N, C, H, W)
    for beta_shape, bmode in (((1, C, 1, 1), _fused.PER_CHANNEL), ((N, C, 1, 1), _fused.PER_PLANE),
                              ((N, C, H, W), _fused.PER_ELEMENT)):
        beta = torch.randn(beta_shape, requires_grad=True)
        b, got = _fused._beta_layout(beta, x, x.dtype)
        assert b is beta and got == bmode
    p = torch.randn(1, C, 1, 1, requires_grad=True)
    assert _fused._channel_values(p, x, x.dtype) is p
    layer = torch.randn(N, 1, 1, 1, requires_grad=True)  # per sample: spread to planes, summed back by autograd
    b, got = _fused._beta_layout(layer, x, x.dtype)
    assert got == _fused.PER_PLANE and b.shape == (N * C,) and b.grad_fn is not None


def test_modules_take_the_gate_and_refuse_an_unknown_one():
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W) * 4
    for make in (lambda gate: AconC(C, gate=gate), lambda gate: MetaAconC(C, r=1, gate=gate),
                 lambda gate: MetaAcon(C, LayerBeta(C), gate=gate)):
        torch.manual_seed(1)
        hard = make("hard_sigmoid")
        torch.manual_seed(1)
        soft = make("sigmoid")
        y = hard(x)
        assert hard.gate == "hard_sigmoid" and not torch.allclose(y, soft(x), atol=1e-3)
        with _fused.use_fused(False):  # the reference formula with the same gate
            torch.testing.assert_close(hard(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown gate 'tanh'; valid choices: hard_sigmoid, sigmoid"):
        AconC(C, gate="tanh")


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_triton_kernels_compile_for_a_gpu_target_with_both_gates(kernel):
    # Triton compiles to an sm_90 cubin without a GPU: a syntax and typing check of the CUDA path.
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from acon import _fused_triton as ft

    fn = ft._forward_kernel if kernel == "forward" else ft._backward_kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn  # unwrap the autotuner
    names = list(fn.arg_names)
    ptrs = names[: names.index("P")]
    # under autocast x (and g, dx) are bf16 while p1, p2 and a module's beta stay float32
    cases = [(False, False, True, False), (True, False, True, False), (False, False, False, False),
             (False, True, False, False), (False, True, False, True)]  # (full, channel, hard, mixed)
    for full, channel, hard, mixed in cases:
        consts = {"FULL": full, "CHANNEL": channel, "HARD": hard, "CT": triton.language.float32, "BP": 2, "BHW": 1024}
        wide = {"sums"} | ({"p1", "p2", "beta"} if mixed else set())
        sig = {n: ("*fp32" if n in wide else "*bf16") for n in ptrs} | {"P": "i32", "C": "i32", "HW": "i32"}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig | dict.fromkeys(consts, "constexpr"), constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm


def test_triton_autotune_keeps_one_row_width_per_tile_size():
    pytest.importorskip("triton")
    from acon import _fused_triton as ft

    for hw, widths in [(1, {1}), (49, {64}), (3136, {1024, 2048, 4096})]:
        kept = ft._prune(ft._configs(), {"HW": hw})
        assert len(kept) == len(ft.TILES) * len(ft.WARPS)
        assert {c.kwargs["BHW"] for c in kept} == widths
        assert all(c.kwargs["BP"] * c.kwargs["BHW"] in ft.TILES for c in kept)


# ---------------------------------------------------------------------------------------------
# The Triton kernels under Triton's interpreter: every tile shape, the tuner, half-precision inputs.

interpreted_only = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 process that "
                                      "test_triton_kernels_under_the_interpreter starts")


BETA_LAYOUTS = {"beta_per_channel": lambda shape: (shape[1],), "beta_per_plane": lambda shape: (shape[0] * shape[1],),
                "beta_per_element": tuple}


def _plane_inputs(shape, layout, dtype=torch.float32, seed=0):
    """x, p1, p2 (C,), beta (``BETA_LAYOUTS``), g: the plane kernels' arguments."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x, grad = (torch.randn(shape, generator=g) * 2 for _ in range(2))
    p1, p2 = torch.randn(c, generator=g), torch.randn(c, generator=g)
    beta = torch.randn(BETA_LAYOUTS[layout](shape), generator=g)
    return [t.to(dtype) for t in (x, p1, p2, beta, grad)]


def _assert_plane_kernels_match_closed_form(kernels, args, hard, atol=1e-5):
    """The Triton kernels' forward and backward against the closed form in float64 on the same inputs."""
    x, p1, p2, beta, g = args
    exact = [t.double() for t in args]
    torch.testing.assert_close(kernels.forward(x, p1, p2, beta, hard).double(), _fused._math_forward(*exact[:4], hard),
                               rtol=1e-5, atol=atol)
    got = kernels.backward(g, x, p1, p2, beta, hard)
    want = _fused._math_backward(exact[4], *exact[:4], hard)
    assert got[1].dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)  # fp32 accumulation
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=atol)


@interpreted_only
@pytest.mark.parametrize("hard", [False, True], ids=["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout", sorted(BETA_LAYOUTS))
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 5, 7), (2, 2, 65, 65)], ids=["hw1", "hw35", "hw4225"])
def test_triton_interpreted_every_tile_matches_the_closed_form(interpreted_triton, monkeypatch, shape, layout, hard):
    # 65 x 65 = 4225 positions: more than the widest tile, so every tile shape splits the plane
    tiles = {(c.kwargs["BP"], c.kwargs["BHW"]): c for c in interpreted_triton._prune(interpreted_triton._configs(), {"HW": shape[-1] * shape[-2] if len(shape) > 2 else 1})}
    assert len(tiles) == len(interpreted_triton.TILES) or shape == (5, 3)
    args = _plane_inputs(shape, layout)
    for config in tiles.values():
        for kernel in (interpreted_triton._forward_kernel, interpreted_triton._backward_kernel):
            monkeypatch.setattr(kernel, "configs", [config])  # one config: the tuner runs it as is
        _assert_plane_kernels_match_closed_form(interpreted_triton, args, hard, atol=1e-4)


@interpreted_only
def test_triton_interpreted_tuning_leaves_nothing_behind_in_the_result(interpreted_triton, monkeypatch):
    # The tuner runs every tile on the call's own output buffers before the chosen one runs: the
    # kernel must write its sums, not add to them, or the tuning runs would count in the result.
    kernel = interpreted_triton._backward_kernel
    ran = []

    def bench(*args, config, **meta):
        ran.append(config.kwargs["BHW"])
        type(kernel)._bench(kernel, *args, config=config, **meta)
        return [1.0 / config.kwargs["BHW"]] * 3

    monkeypatch.setattr(kernel, "_bench", bench)
    monkeypatch.setattr(kernel, "early_config_prune", interpreted_triton._prune)
    monkeypatch.setattr(kernel, "cache", {})
    args = _plane_inputs((1, 2, 65, 65), "beta_per_plane")
    _assert_plane_kernels_match_closed_form(interpreted_triton, args, hard=False, atol=1e-4)
    assert set(ran) == {1024, 2048, 4096} and kernel.best_config.kwargs["BHW"] == 4096


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["beta_per_plane", "beta_per_element"])
def test_triton_interpreted_half_inputs_accumulate_in_float32(interpreted_triton, dtype, layout):
    args = _plane_inputs((2, 3, 9, 9), layout, dtype)
    # outputs are rounded to the input's dtype once (8 bits of mantissa for bfloat16); sums stay float32
    atol = {torch.bfloat16: 0.1, torch.float16: 1e-2, torch.float64: 1e-12}[dtype]
    _assert_plane_kernels_match_closed_form(interpreted_triton, args, hard=False, atol=atol)
    sums = interpreted_triton.backward(args[4], *args[:4])[1]
    exact = _fused._math_backward(*(t.double() for t in [args[4]] + args[:4]), False)[1]
    # a float32 sum of 81 rounded terms: far tighter than bfloat16's own 8 bits would allow
    torch.testing.assert_close(sums.double(), exact, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter():
    """This module's kernel tests once more, in a process where Triton interprets the CUDA kernels on CPU.
    Not the float64 gradchecks (2-3 s each there): the value-and-gradient tests cover the same paths."""
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-k", "(triton-interpreted or triton_interpreted) and not gradcheck"],
                         env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ deselected in .*", summary), summary  # nothing skipped, failed or in error
    kernel_tests = [f for name, f in globals().items()
                    if name.startswith("test_") and "gradcheck" not in name and "device" in inspect.signature(f).parameters]
    interpreted_tests = [name for name in globals() if name.startswith("test_triton_interpreted")]
    assert int(summary.split(" passed")[0].split()[-1]) >= len(kernel_tests) + len(interpreted_tests), summary


@pytest.mark.parametrize("module", [lambda: MetaAconC(8, r=4), lambda: MetaAcon(8, PixelBeta(8)),
                                    lambda: AconC(8)], ids=["channel", "pixel", "acon_c"])
def test_fake_tensors_get_shapes_from_the_op_not_the_kernel(module):
    """Shape propagation runs a model on fake tensors (no data): the fused module must answer with the custom
    op's fake kernel. It used to hand the fake tensor's data pointer to the C++ kernel, which crashed the
    process (a segfault in ``ablation.sites.propagate_shapes`` on a model that already held meta-ACON)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    require_kernel("cpu")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        y = module()(mode.from_tensor(torch.randn(2, 8, 5, 5)))
    assert y.shape == (2, 8, 5, 5) and type(y).__name__ == "FakeTensor"
