"""ACON numerics: outputs and gradients against a plain-PyTorch reference, gradcheck, limits,
reduced precision, torch.compile and torch.fx."""
import contextlib

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from acon import AconA, AconB, AconC, LayerBeta, MetaAcon, MetaAconC, PixelBeta
from acon._fused import use_fused
from _kernels import kernel_runs

pytestmark = pytest.mark.usefixtures("single_thread")

C = 4
BN_EPS = 1e-5

# ---------------------------------------------------------------- the reference, written out


def ref_acon_c(x, p1, p2, beta):
    """ACON-C as the official release writes it."""
    return (p1 * x - p2 * x) * torch.sigmoid(beta * (p1 * x - p2 * x)) + p2 * x


def ref_bn_train(h, weight, bias):
    """BatchNorm over the batch axis of an (N, K) tensor with batch statistics (train mode)."""
    mean = h.mean(dim=0, keepdim=True)
    var = ((h - mean) ** 2).mean(dim=0, keepdim=True)
    return (h - mean) / torch.sqrt(var + BN_EPS) * weight + bias


def ref_channel_beta(x, p):
    """Official channel-wise beta: sigmoid(bn2(fc2(bn1(fc1(mean_hw x))))), 1x1 convs as matmuls."""
    pooled = x.mean(dim=(2, 3))
    h = pooled @ p["fc1.weight"][:, :, 0, 0].T + p["fc1.bias"]
    h = ref_bn_train(h, p["bn1.weight"], p["bn1.bias"])
    z = h @ p["fc2.weight"][:, :, 0, 0].T + p["fc2.bias"]
    z = ref_bn_train(z, p["bn2.weight"], p["bn2.bias"])
    return torch.sigmoid(z)[:, :, None, None]


REFERENCES = {
    "acon_a": lambda x, p: x * torch.sigmoid(p["beta"] * x),
    "acon_b": lambda x, p: (x - p["p"] * x) * torch.sigmoid(p["beta"] * (x - p["p"] * x)) + p["p"] * x,
    "acon_c": lambda x, p: ref_acon_c(x, p["p1"], p["p2"], p["beta"]),
    "meta_acon_c": lambda x, p: ref_acon_c(x, p["p1"], p["p2"], ref_channel_beta(x, p)),
    "meta_acon_layer": lambda x, p: ref_acon_c(x, p["p1"], p["p2"], torch.sigmoid(x.sum(dim=(1, 2, 3), keepdim=True))),
    "meta_acon_pixel": lambda x, p: ref_acon_c(x, p["p1"], p["p2"], torch.sigmoid(x)),
}
MODULES = {
    "acon_a": lambda c, **kw: AconA(c, beta=lambda t: t.uniform_(0.5, 2.0), **kw),
    "acon_b": lambda c, **kw: AconB(c, beta=lambda t: t.uniform_(0.5, 2.0), **kw),
    "acon_c": lambda c, **kw: AconC(c, beta=lambda t: t.uniform_(0.5, 2.0), **kw),
    "meta_acon_c": lambda c, **kw: MetaAconC(c, r=2, **kw),
    "meta_acon_layer": lambda c, **kw: MetaAcon(c, LayerBeta(c), **kw),
    "meta_acon_pixel": lambda c, **kw: MetaAcon(c, PixelBeta(c), **kw),
}

# layout -> (input shape, channel_dim, to NCHW, from NCHW)
LAYOUTS = {
    "nchw": ((4, C, 3, 2), 1, lambda x: x, lambda y: y),
    "nc": ((4, C), 1, lambda x: x[:, :, None, None], lambda y: y[:, :, 0, 0]),
    "nlc": ((4, 5, C), -1, lambda x: x.transpose(1, 2)[..., None], lambda y: y[..., 0].transpose(1, 2)),
}


def _randomise_bn_affine(module):
    """BN starts at weight 1, bias 0; random values make their gradients and effects visible."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("bn"):
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p))


def _module_and_params(name, device="cpu", **kw):
    module = MODULES[name](C, **kw).to(device)
    _randomise_bn_affine(module)
    params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
    return module, params


# ---------------------------------------------------------------- forward and backward against the reference


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_output_and_every_gradient_match_the_reference_formula(name, layout, fused, device, ieee_fp32):
    shape, channel_dim, to_nchw, from_nchw = LAYOUTS[layout]
    module, params = _module_and_params(name, device, channel_dim=channel_dim)
    x = torch.randn(shape).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(shape).to(device)

    names = [k for k, _ in module.named_parameters()]
    # the fused case must run the kernel, forward and backward (skipped where none can be built)
    with use_fused(fused), kernel_runs(device) if fused else contextlib.nullcontext():
        y = module(x)
        grads = torch.autograd.grad((y * upstream).sum(), [x] + [dict(module.named_parameters())[k] for k in names])
    y_ref = from_nchw(REFERENCES[name](to_nchw(x_ref), params))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)

    grads_ref = torch.autograd.grad((y_ref * upstream).sum(), [x_ref] + [params[k] for k in names])
    for label, g, g_ref in zip(["input"] + names, grads, grads_ref):
        # a conv bias right before train-mode BN has a zero gradient by construction (BN removes the mean)
        if label not in ("fc1.bias", "fc2.bias"):
            assert g_ref.abs().sum() > 0, f"reference gradient of {label} is zero: the test would be vacuous"
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}")


def test_reference_covers_the_generator_parameters_of_meta_acon_c():
    module, _ = _module_and_params("meta_acon_c")
    names = {k for k, _ in module.named_parameters()}
    assert {"fc1.weight", "fc1.bias", "bn1.weight", "bn1.bias", "fc2.weight", "fc2.bias",
            "bn2.weight", "bn2.bias", "p1", "p2"} == names


# ---------------------------------------------------------------- gradcheck in float64


@pytest.mark.parametrize("layout", ["nchw", "nlc"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_gradcheck_passes_in_float64_for_input_and_parameters(name, layout, device):
    shape, channel_dim, _, _ = LAYOUTS[layout]
    shape = (3,) + shape[1:]  # gradcheck perturbs every element: keep it tiny
    module, _ = _module_and_params(name, device, channel_dim=channel_dim)
    module.double()
    names = [k for k, _ in module.named_parameters()]
    inputs = [torch.randn(shape, dtype=torch.float64).to(device).requires_grad_()]
    inputs += [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]

    def fn(x, *flat):
        return functional_call(module, dict(zip(names, flat)), (x,))

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-3)


# ---------------------------------------------------------------- limits of the family


def _grid():
    return torch.cat([torch.linspace(-3, 3, 2001), torch.linspace(-1e-3, 1e-3, 201), torch.randn(798) * 3])


def test_acon_c_with_p1_one_p2_zero_and_large_beta_equals_relu():
    module = AconC(C, p1=1.0, p2=0.0, beta=1e4)
    x = _grid().reshape(1, C, -1)
    assert (module(x) - F.relu(x)).abs().max() < 1e-4


def test_acon_c_large_beta_tends_to_max_of_p1x_and_p2x():
    module = AconC(C, beta=1e4)
    x = _grid().reshape(1, C, -1)
    p1, p2 = module.p1.reshape(1, C, 1), module.p2.reshape(1, C, 1)
    assert (module(x) - torch.maximum(p1 * x, p2 * x)).abs().max() < 1e-3


@pytest.mark.parametrize("beta,tol", [(0.0, 1e-6), (1e-7, 1e-5)])
def test_acon_c_with_beta_to_zero_equals_mean_of_p1x_and_p2x(beta, tol):
    module = AconC(C, beta=beta)
    # the gap grows like beta * ((p1 - p2) x)^2 / 4, so keep |x| <= 3
    x = torch.linspace(-3, 3, C * 501).reshape(1, C, -1)
    p1, p2 = module.p1.reshape(1, C, 1), module.p2.reshape(1, C, 1)
    assert (module(x) - (p1 * x + p2 * x) / 2).abs().max() < tol


def test_acon_a_with_beta_one_equals_silu():
    x = _grid().reshape(2, C, -1)
    torch.testing.assert_close(AconA(C)(x), F.silu(x), rtol=1e-6, atol=1e-6)


def test_acon_b_with_p_zero_equals_acon_a():
    beta = torch.rand(1, C, 1, 1) * 3
    b = AconB(C, p=0.0, beta=lambda t: t.copy_(beta))
    a = AconA(C, beta=lambda t: t.copy_(beta))
    x = torch.randn(2, C, 5, 5) * 3
    torch.testing.assert_close(b(x), a(x), rtol=1e-6, atol=1e-6)


def test_acon_b_equals_acon_c_with_p1_one():
    b = AconB(C)
    c = AconC(C, p1=1.0, p2=lambda t: t.copy_(b.p.detach()), beta=lambda t: t.copy_(b.beta.detach()))
    x = torch.randn(2, C, 5, 5) * 3
    torch.testing.assert_close(b(x), c(x), rtol=1e-6, atol=1e-6)


def test_acon_c_slope_tends_to_p1_at_plus_infinity_and_p2_at_minus_infinity():
    p1, p2 = torch.linspace(0.5, 2.0, C), torch.linspace(-1.5, -0.25, C)
    module = AconC(C, p1=lambda t: p1, p2=lambda t: p2)
    x = torch.tensor([100.0, -100.0]).repeat(1, C, 1).requires_grad_()
    module(x).sum().backward()
    torch.testing.assert_close(x.grad[0, :, 0], p1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad[0, :, 1], p2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("generator", [lambda c: MetaAconC(c, r=2).beta, LayerBeta, PixelBeta], ids=["channel", "layer", "pixel"])
def test_generated_beta_lies_strictly_between_zero_and_one(generator):
    beta = generator(C)(torch.randn(4, C, 3, 3) * 0.1)
    assert beta.min() > 0 and beta.max() < 1


# ---------------------------------------------------------------- reduced precision


def _conv_then(name):
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), MODULES[name](C))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_autocast_gives_finite_results_close_to_float32(name, dtype, device):
    net = _conv_then(name).to(device)
    x = (torch.randn(4, 3, 5, 5) * 4).to(device)
    expected = net(x)
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        y = net(x)
        y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=5e-2)
    for pname, p in net.named_parameters():
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_cast_to_half_precision_keeps_dtype_and_stays_finite(name, dtype, device):
    module = MODULES[name](C).to(device)
    x = (torch.randn(4, C, 5, 5) * 30).to(device)
    expected = module(x)
    y = module.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    # loose: half precision carries 8 (bf16) or 11 (fp16) significant bits
    torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=0.5)


# ---------------------------------------------------------------- torch.compile and torch.fx


def test_modules_under_torch_compile_match_eager_forward_and_backward():
    # aot_eager: runs dynamo capture and AOT autograd like inductor; inductor took ~16 s on 2 CPU cores
    net = nn.Sequential(AconC(C), MetaAconC(C, r=2), MetaAcon(C, LayerBeta(C)), AconB(C), AconC(C, gate="hard_sigmoid"))
    x = torch.randn(3, C, 4, 4)
    y = net(x)
    grads = torch.autograd.grad(y.square().sum(), list(net.parameters()))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with kernel_runs("cpu"):  # the compiled graph calls the custom op, which runs the kernel
        y_c = compiled(x)
        grads_c = torch.autograd.grad(y_c.square().sum(), list(net.parameters()))
    torch.testing.assert_close(y_c, y, rtol=1e-6, atol=1e-6)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(MODULES))
def test_symbolic_trace_output_equals_eager(name, layout, device):
    shape, channel_dim, _, _ = LAYOUTS[layout]
    module = MODULES[name](C, channel_dim=channel_dim).to(device)
    traced = torch.fx.symbolic_trace(module)
    x = torch.randn(shape).to(device)
    assert torch.equal(traced(x), module(x))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_symbolic_trace_keeps_the_channel_check(name):
    traced = torch.fx.symbolic_trace(MODULES[name](C))
    with pytest.raises(ValueError, match=r"\b5\b.*\b4\b"):
        traced(torch.randn(2, 5, 3, 3))
