"""DY-ReLU (A, B, C) and FReLU: formulas against references written from the papers, gradcheck, parameters and
cost against hand counts, placement on torchvision, CIFAR and timm models, and the batch-size-1 rule."""
import math

import pytest
import torch
import torchvision
from torch.func import functional_call
from torch.nn import functional as F

import ablation
from ablation.complexity import count
from acon.activations import activation_complexity, activation_options, create_activation
from acon.rivals.dy_relu import DyReLU
from acon.rivals.frelu import FReLU

pytestmark = pytest.mark.usefixtures("single_thread")

C = 8
BN_EPS = 1e-5
DY = ("dy_relu_a", "dy_relu_b", "dy_relu_c")
RIVALS = DY + ("frelu",)

# ---------------------------------------------------------------- the references, written from the papers


def ref_dy_relu(x, p, variant, k=2, lambda_a=1.0, lambda_b=0.5, gate="sigmoid", temperature=1.0):
    """Chen et al. eq. (2)-(4) on channels-first x (N, C, H, W): a^k = alpha^k + lambda_a (2 gate(z) - 1),
    b^k = beta^k + lambda_b (2 gate(z) - 1), alpha = (1, 0, ...), beta = 0, y = max_k (a^k x + b^k); C times
    pi = min(HW softmax(bn(w . x) / tau) / 3, 1) (DynamicHead's spatial branch). fc2 outputs a^1, b^1, a^2, ..."""
    n, c = x.shape[:2]
    pooled = x.mean(dim=(2, 3))
    z = torch.relu(pooled @ p["fc1.weight"].T + p["fc1.bias"]) @ p["fc2.weight"].T + p["fc2.bias"]
    g = torch.sigmoid(z) if gate == "sigmoid" else torch.clamp((z + 3) / 6, 0, 1)
    res = (2 * g - 1).reshape(n, k, 2, -1)
    pieces = []
    for j in range(k):
        a = (1.0 if j == 0 else 0.0) + lambda_a * res[:, j, 0]
        b = lambda_b * res[:, j, 1]
        pieces.append(a[:, :, None, None] * x + b[:, :, None, None])
    y = torch.stack(pieces).amax(dim=0)
    if variant == "C":
        s = (x * p["spa.0.weight"].reshape(1, c, 1, 1)).sum(dim=1) + p["spa.0.bias"]  # (N, H, W)
        s = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + BN_EPS) * p["spa.1.weight"] + p["spa.1.bias"]
        e = torch.exp(s.reshape(n, -1) / temperature)
        pi = torch.clamp(x[0, 0].numel() * e / e.sum(dim=1, keepdim=True) / 3, max=1.0)
        y = y * pi.reshape(n, 1, *x.shape[2:])
    return y


def ref_frelu(x, p, kernel_size=3):
    """Ma et al. eq. (1)-(2): y = max(x, T(x)), T(x)_c = BN(sum_{u,v} w_{c,u,v} x_c(i+u, j+v) + bias_c), zero padding."""
    pad = kernel_size // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[2:]
    t = sum(p["conv_frelu.weight"][:, 0, u, v].reshape(1, -1, 1, 1) * xp[:, :, u:u + h, v:v + w]
            for u in range(kernel_size) for v in range(kernel_size)) + p["conv_frelu.bias"].reshape(1, -1, 1, 1)
    mean, var = t.mean(dim=(0, 2, 3), keepdim=True), t.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    t = (t - mean) / torch.sqrt(var + BN_EPS) * p["bn_frelu.weight"].reshape(1, -1, 1, 1) \
        + p["bn_frelu.bias"].reshape(1, -1, 1, 1)
    return torch.maximum(x, t)


def _reference(name, x, p, **options):
    if name == "frelu":
        return ref_frelu(x, p, **options)
    return ref_dy_relu(x, p, name[-1].upper(), **options)


def _module(name, **options):
    """A float64 module with random BN affine parameters (they start at 1 and 0)."""
    module = create_activation(name, C, **options).double()
    with torch.no_grad():
        for key, prm in module.named_parameters():
            if key.startswith(("spa.1", "bn_frelu")):
                prm.copy_(torch.rand_like(prm) + 0.5 if key.endswith("weight") else torch.randn_like(prm))
    return module


# ---------------------------------------------------------------- forward and gradients


CASES = [(name, {}) for name in RIVALS] + [
    ("dy_relu_b", {"k": 3, "gate": "hard_sigmoid", "lambda_a": 0.7, "lambda_b": 0.2}),
    ("dy_relu_c", {"temperature": 10.0}),
    ("frelu", {"kernel_size": 5}),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name,options", CASES, ids=lambda v: str(v))
def test_rival_output_and_every_gradient_match_the_reference_formula(name, options, channels_last):
    module = _module(name, **options, **({"channel_dim": 3} if channels_last else {}))
    params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
    x = torch.randn(3, C, 4, 3, dtype=torch.float64, requires_grad=True)
    ref_options = {k: v for k, v in options.items() if k != "bn"}
    x_in = x.permute(0, 2, 3, 1) if channels_last else x
    y = module(x_in)
    y = y.permute(0, 3, 1, 2) if channels_last else y
    y_ref = _reference(name, x, params, **ref_options)
    torch.testing.assert_close(y, y_ref)

    upstream = torch.randn_like(y)
    names = [k for k, _ in module.named_parameters()]
    grads = torch.autograd.grad((y * upstream).sum(), [x] + [dict(module.named_parameters())[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * upstream).sum(), [x] + [params[k] for k in names])
    for label, g, g_ref in zip(["input"] + names, grads, grads_ref):
        if label != "spa.0.bias":  # a bias right before train-mode BN has a zero gradient by construction
            assert g_ref.abs().sum() > 0, f"reference gradient of {label} is zero: the test would be vacuous"
        torch.testing.assert_close(g, g_ref, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.parametrize("name,shape,channel_dim", [(n, (2, C, 3, 2), 1) for n in RIVALS] + [("dy_relu_c", (2, 5, C), 2)])
def test_gradcheck_passes_in_float64_for_input_and_parameters(name, shape, channel_dim):
    module = _module(name, channel_dim=channel_dim)
    names = [k for k, _ in module.named_parameters()]
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True)]
    inputs += [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]

    def fn(x, *flat):
        return functional_call(module, dict(zip(names, flat)), (x,))

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("name", ["dy_relu_a", "dy_relu_b"])
def test_dy_relu_with_zero_residuals_is_relu(name):
    # fc2 = 0 gives gate 1/2, residual 0: a = (1, 0), b = (0, 0), the paper's initialisation, is exactly ReLU
    module = create_activation(name, C)
    with torch.no_grad():
        module.fc2.weight.zero_()
        module.fc2.bias.zero_()
    x = torch.randn(2, C, 3, 3)
    torch.testing.assert_close(module(x), torch.relu(x))


@pytest.mark.parametrize("shape", [(4, C), (4, C, 3, 2)], ids=["one position", "grid"])
def test_dy_relu_c_with_flat_attention_is_b_shrunk_three_fold(shape):
    # pi averages 1/3 by design (DynamicHead's hardtanh(S softmax, 0, 3) / 3): equal logits (one position, or a zero
    # 1x1 conv) give pi = 1/3 everywhere, so C is B / 3; the documented cause of C's low quick-study accuracy
    b = create_activation("dy_relu_b", C)
    c = create_activation("dy_relu_c", C)
    c.load_state_dict(b.state_dict(), strict=False)
    with torch.no_grad():
        c.spa[0].weight.zero_()
    x = torch.randn(shape)
    torch.testing.assert_close(c.attention(x), torch.full((4, 1, *shape[2:]), 1 / 3))
    torch.testing.assert_close(c(x), b(x) / 3)


_TOP = 10 ** 0.1  # e^(ln 10 / 10): the largest logit's weight at temperature 10


@pytest.mark.parametrize("temperature,expected", [(1.0, [2 / 15] * 5 + [1.0]),
                                                  (10.0, [2 / (5 + _TOP)] * 5 + [2 * _TOP / (5 + _TOP)])])
def test_dy_relu_c_attention_clamps_at_one_and_temperature_flattens_it(temperature, expected):
    # six positions, logits (0, 0, 0, 0, 0, ln 10): softmax 1/15 and 10/15, pi = 6 softmax / 3 = 2/15 and min(4/3, 1)
    x = torch.zeros(1, C, 6)
    x[0, 0, 5] = math.log(10.0)
    c = create_activation("dy_relu_c", C, bn=False, temperature=temperature)
    with torch.no_grad():
        c.spa[0].weight.zero_()
        c.spa[0].weight[0, 0] = 1.0
        c.spa[0].bias.zero_()
    torch.testing.assert_close(c.attention(x).flatten(), torch.tensor(expected))


def test_dy_relu_on_tokens_pools_over_the_tokens():
    module = create_activation("dy_relu_b", C, channel_dim=2).double()
    tokens = torch.randn(2, 5, C, dtype=torch.float64)  # N x L x C
    params = dict(module.named_parameters())
    expected = ref_dy_relu(tokens.transpose(1, 2)[..., None], params, "B")[..., 0].transpose(1, 2)
    torch.testing.assert_close(module(tokens), expected)


# ---------------------------------------------------------------- parameters and cost against hand counts


# width 8, r = 4: hidden 8 // 4 = 2; K = 2
HAND_PARAMS = {
    "dy_relu_a": (8 * 2 + 2) + (2 * 4 + 4),  # fc1 8->2 with bias; fc2 2->2K = 4 with bias: 30
    "dy_relu_b": (8 * 2 + 2) + (2 * 32 + 32),  # fc2 2->2KC = 32: 114
    "dy_relu_c": (8 * 2 + 2) + (2 * 32 + 32) + (8 + 1) + 2,  # + spa conv 8->1 with bias + BN(1) weight, bias: 125
    "frelu": 8 * 3 * 3 + 8 + 2 * 8,  # depthwise 3x3 weight + bias + BN weight, bias: 96
}

# input (2, 8, 3, 3): N = 2, S = 9 positions, n = 144 elements
N, S, n = 2, 9, 144
HAND_COST = {
    "dy_relu_a": {"macs": N * 8 * 2 + N * 2 * 4,  # fc1 + fc2: 32 + 16
                  "sigmoid": N * 4,  # gate on the 2K outputs
                  "mul": N * 8 + N * 4 + 2 * n,  # pool's 1/S, residual scale, K slopes
                  "add": N * 4 + 2 * n,  # residual offset, K intercepts
                  "mean": n,  # the pool's sum
                  "other": N * 2 + 1 * n},  # ReLU in the hyper-function, K - 1 maxima
    "dy_relu_b": {"macs": N * 8 * 2 + N * 2 * 32, "sigmoid": N * 32, "mul": N * 8 + N * 32 + 2 * n,
                  "add": N * 32 + 2 * n, "mean": n, "other": N * 2 + n},
    "dy_relu_c": {"macs": N * 8 * 2 + N * 2 * 32 + N * S * 8,  # + the 1x1 conv C -> 1 at every position
                  "sigmoid": N * 32,
                  "mul": N * 8 + N * 32 + 2 * n + N * S + N * S + n,  # + BN, times S/3, y times pi
                  "add": N * 32 + 2 * n + N * S,  # + BN
                  "mean": n,
                  "other": N * 2 + n + N * S + N * S},  # + softmax, clamp
    "frelu": {"macs": n * 9, "sigmoid": 0, "mul": n, "add": n, "mean": 0, "other": n},  # conv, BN, maximum
}


@pytest.mark.parametrize("name", RIVALS)
def test_parameters_and_cost_equal_the_dispatch_count_and_the_hand_count(name):
    module = create_activation(name, C)
    shape = (N, C, 3, 3)
    analytic, counted = activation_complexity(name, C, shape), count(module, shape)
    hand = HAND_COST[name]
    assert sum(p.numel() for p in module.parameters()) == analytic["params"] == counted.params == HAND_PARAMS[name]
    assert analytic["macs"] == counted.macs == hand["macs"]
    assert analytic["elementwise"] == counted.elementwise == {k: v for k, v in hand.items() if k != "macs"}
    assert counted.uncounted == ()


@pytest.mark.parametrize("name,options,shape", [
    ("dy_relu_c", {"k": 3, "gate": "hard_sigmoid", "temperature": 10.0, "bn": False}, (2, C, 5, 1)),
    ("dy_relu_b", {"k": 1, "r": 2}, (3, C)),
    ("dy_relu_a", {"r": 16}, (2, C, 4, 4)),
    ("frelu", {"kernel_size": 5, "bn": False}, (2, C, 6, 6)),
])
def test_analytic_cost_follows_the_options(name, options, shape):
    analytic, counted = activation_complexity(name, C, shape, **options), count(create_activation(name, C, **options), shape)
    assert (analytic["params"], analytic["macs"], analytic["elementwise"]) == (counted.params, counted.macs,
                                                                               counted.elementwise)


def test_channels_last_module_costs_the_same_as_channels_first():
    module = create_activation("dy_relu_c", C, channel_dim=3)
    counted = count(module, (2, 3, 3, C))
    assert counted.elementwise == activation_complexity("dy_relu_c", C, (2, C, 3, 3))["elementwise"]


# ---------------------------------------------------------------- placement


def _tiny_torchvision_resnet(**_):
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)


@pytest.mark.parametrize("model", [_tiny_torchvision_resnet, "resnet20", "timm/resnet10t"],
                         ids=["torchvision", "cifar", "timm"])
@pytest.mark.parametrize("name", RIVALS)
def test_every_site_gets_the_rival_and_the_model_runs(model, name):
    if isinstance(model, str) and model.startswith("timm/"):
        pytest.importorskip("timm")
    built, sites = ablation.build_model(model, activation=name, input_size=32, num_classes=10)
    kind = FReLU if name == "frelu" else DyReLU
    rivals = [m for m in built.modules() if isinstance(m, kind)]
    assert len(sites) > 0 and len(rivals) == len(sites)
    assert {(m.channels, s.width) for m, s in zip(rivals, sites)} == {(s.width, s.width) for s in sites}
    assert built(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _tiny_vit(**_):
    """torchvision's VisionTransformer at toy size: two GELU sites on (N, L, C) tokens."""
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=10)


@pytest.mark.parametrize("name", DY)
def test_dy_relu_on_token_sites(name):
    built, sites = ablation.build_model(_tiny_vit, activation=name, input_size=32)
    assert [s.channel_dim for s in sites] == [2, 2]  # N x L x C
    assert sum(isinstance(m, DyReLU) for m in built.modules()) == 2
    assert built(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_frelu_refuses_token_sites_in_one_line_naming_the_site():
    with pytest.raises(ValueError) as caught:
        ablation.build_model(_tiny_vit, activation="frelu", input_size=32)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("site encoder.layers.") and "FReLU needs a spatial grid" in message


def test_frelu_reads_a_fully_connected_activation_as_a_one_by_one_grid():
    """tiny_cnn's head activation is (N, C): the zero-padded window keeps its centre tap, max(x, BN(w x + b))."""
    module = create_activation("frelu", C).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
        module.bn_frelu.running_mean.uniform_(-1, 1)
        module.bn_frelu.running_var.uniform_(0.5, 2)
    x = torch.randn(5, C)
    bn = module.bn_frelu
    centre = module.conv_frelu.weight[:, 0, 1, 1] * x + module.conv_frelu.bias
    t = (centre - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(module(x), torch.maximum(x, t))
    model, sites = ablation.build_model("tiny_cnn", activation="frelu", in_channels=1, num_classes=10, input_size=28)
    assert "head.2" in [s.path for s in sites] and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- the batch-size-1 rule, options, tracing


@pytest.mark.parametrize("name", RIVALS)
def test_batch_of_one_trains(name):
    module = create_activation(name, C).train()
    x = torch.randn(1, C, 3, 3, requires_grad=True)
    module(x).sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", ["dy_relu_c", "frelu"])
def test_bn_branch_on_one_value_per_channel_needs_bn_off(name):
    x = torch.randn(1, C, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        create_activation(name, C).train()(x)
    assert create_activation(name, C, bn=False).train()(x).shape == x.shape


def test_options_are_the_papers_axes_and_bad_values_are_refused():
    assert {"k", "r", "gate", "lambda_a", "lambda_b", "channel_dim"} == activation_options("dy_relu_b")
    assert {"temperature", "bn"} < activation_options("dy_relu_c")
    assert {"kernel_size", "bn", "channel_dim"} == activation_options("frelu")
    with pytest.raises(ValueError, match="odd integer"):
        create_activation("frelu", C, kernel_size=4)
    with pytest.raises(ValueError, match="integer >= 1"):
        create_activation("dy_relu_b", C, k=0)
    with pytest.raises(ValueError, match="unknown gate"):
        create_activation("dy_relu_a", C, gate="tanh")
    with pytest.raises(ValueError, match="accepts|valid|unknown|unexpected"):
        create_activation("dy_relu_b", C, temperature=2.0)


@pytest.mark.parametrize("name", RIVALS)
def test_rivals_trace_with_torch_fx(name):
    module = create_activation(name, C).eval()
    traced = torch.fx.symbolic_trace(module)
    x = torch.randn(2, C, 3, 3)
    torch.testing.assert_close(traced(x), module(x))
