"""PAU, SMU / SMU-1 and APA (AGLU): formulas against references written from the papers, float64 gradcheck,
parameter and cost counts by hand, and placement on a torchvision, a CIFAR and a timm (token) model."""

import pytest
import torch
import torchvision
from torch.func import functional_call
from torch.nn import functional as F

import ablation
from ablation.complexity import count
from acon import create_activation
from acon.activations import activation_complexity
from acon.rivals.apa import AGLU
from acon.rivals.pau import PAU
from acon.rivals.smu import SMU, SMU1

pytestmark = pytest.mark.usefixtures("single_thread")

# ---------------------------------------------------------------- the references, written from the papers


def ref_pau(x, a, b, version="A"):
    """Molina et al.: sum_j a_j x^j over 1 + sum_k |b_k| |x|^k (code, "A") or 1 + |sum_k b_k x^k| (paper, "B")."""
    p = sum(a[j] * x**j for j in range(len(a)))
    if version == "A":
        return p / (1 + sum(b[k].abs() * x.abs() ** (k + 1) for k in range(len(b))))
    return p / (1 + sum(b[k] * x ** (k + 1) for k in range(len(b))).abs())


def ref_smu(x, mu, alpha=0.25):
    """Biswas et al., SMU: ((1 + alpha) x + (1 - alpha) x erf(mu (1 - alpha) x)) / 2."""
    return ((1 + alpha) * x + (1 - alpha) * x * torch.erf(mu * (1 - alpha) * x)) / 2


def ref_smu1(x, mu, alpha=0.25):
    """Biswas et al., SMU-1: ((1 + alpha) x + sqrt(((1 - alpha) x)^2 + mu^2)) / 2."""
    return ((1 + alpha) * x + torch.sqrt(((1 - alpha) * x) ** 2 + mu**2)) / 2


def ref_aglu(x, lam, kappa):
    """Alexandridis et al.: x * APA(x), APA = (lambda exp(-kappa x) + 1) ** (-1 / lambda)."""
    return x * (lam * torch.exp(-kappa * x) + 1) ** (-1 / lam)


def _pau(version):
    module = PAU(8, version=version).double()
    with torch.no_grad():  # move b_1 and b_3 off ~0 so every coefficient's gradient is visible
        module.denominator.copy_(torch.tensor([0.7, -3.9, 0.4, -0.3]))
    return module


def _with(module, **values):
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).fill_(value)
    return module


# name -> (module in float64, reference(x, *module's parameters in named_parameters order))
CASES = {
    "pau_a": (lambda: _pau("A"), lambda x, a, b: ref_pau(x, a, b, "A")),
    "pau_b": (lambda: _pau("B"), lambda x, a, b: ref_pau(x, a, b, "B")),
    "smu": (lambda: _with(SMU(8).double(), mu=1.3), ref_smu),
    "smu1": (lambda: _with(SMU1(8).double(), mu=0.4), ref_smu1),
    # the official guard: lambda enters as relu(lambda) + 1e-8
    "apa": (lambda: _with(AGLU(8).double(), lambda_param=0.6, kappa_param=1.1), lambda x, lam, k: ref_aglu(x, lam + 1e-8, k)),
}


def _inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 8, 3, 3, dtype=torch.float64) * 2).requires_grad_()


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_papers_formula_in_float64(case):
    make, reference = CASES[case]
    module, x = make(), _inputs()
    params = list(module.parameters())
    y, y_ref = module(x), reference(x, *params)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *params], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *params], g)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_in_float64(case):
    module, x = CASES[case][0](), _inputs()[:1, :2].detach().requires_grad_()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, *ps):
        return functional_call(module, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_initial_pau_is_the_official_leaky_relu_fit_within_0_034_on_minus_3_to_3():
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    with torch.no_grad():
        err = (PAU(8).double()(x) - F.leaky_relu(x, 0.01)).abs()
    # the largest error is at x = 0, where the fit is a_0 = 0.0336; on average it is 0.0043
    assert err.max() < 0.034 and err.mean() < 0.005
    assert PAU(8).degrees == (5, 4)


def test_smu_starts_as_leaky_relu_0_25_and_apa_spans_silu_and_the_gumbel_gate():
    x = torch.tensor([-3.0, -0.5, 0.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(SMU(4).double()(x), F.leaky_relu(x, 0.25))
        torch.testing.assert_close(_with(AGLU(4).double(), lambda_param=1.0, kappa_param=1.0)(x), F.silu(x))
        gumbel = x * torch.exp(-torch.exp(-x))
        torch.testing.assert_close(_with(AGLU(4).double(), lambda_param=1e-6, kappa_param=1.0)(x), gumbel,
                                   rtol=1e-5, atol=1e-6)
        # lambda <= 0 is guarded as relu(lambda) + 1e-8: the Gumbel limit, finite
        assert torch.isfinite(_with(AGLU(4), lambda_param=-0.5)(x.float() * 30)).all()


def test_pau_denominator_is_at_least_one_so_large_inputs_stay_finite():
    x = torch.tensor([-1e3, -50.0, 0.0, 50.0, 1e3])
    for version in ("A", "B"):
        assert torch.isfinite(PAU(1, version=version)(x)).all()


def test_float16_stays_finite_and_close_to_float32():
    x = torch.arange(-100, 101) / 10  # 0 included: SMU's initial scale mu (1 - alpha) = 7.5e5 is inf in float16
    for module in (PAU(1), PAU(1, version="B"), SMU(1), SMU1(1), AGLU(1)):
        with torch.no_grad():
            want, got = module(x), module(x.half()).float()
        assert torch.isfinite(got).all(), module
        torch.testing.assert_close(got, want, rtol=5e-3, atol=2e-3, msg=repr(module))


def test_options_are_checked_with_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown PAU version 'C'; valid choices: A, B"):
        create_activation("pau", 4, version="C")
    with pytest.raises(ValueError, match=r"unknown PAU init 'relu'; valid choices: leaky_relu, leaky_relu2"):
        create_activation("pau", 4, init="relu")
    assert create_activation("pau", 4, init=([0.0, 1.0, 0.5], [0.2, 0.1, 0.3])).degrees == (2, 3)


# ---------------------------------------------------------------- parameters and cost, by hand

SHAPE = (2, 8, 3, 3)  # N = 2 * 8 * 3 * 3 = 144 elements
N = 144
HAND = {
    # P and Q by Horner: (5 + 4) mul and (5 + 4) add per element; abs(x) and the division per element, |b| once (4)
    ("pau", ()): {"params": 6 + 4, "mul": 9 * N, "add": 9 * N, "other": 2 * N + 4},
    # version B: abs of the sum instead of abs(x), no |b|
    ("pau", (("version", "B"),)): {"params": 6 + 4, "mul": 9 * N, "add": 9 * N, "other": 2 * N},
    # mu (1 - alpha) once; mu' x, c2 erf, x * (...) per element; c1 + ...; erf; the clamp of mu' once
    ("smu", ()): {"params": 1, "mul": 3 * N + 1, "add": N, "other": N + 1},
    # mu mu once; (1 - alpha) x, u u, c1 x, 0.5 sqrt; two adds; sqrt
    ("smu1", ()): {"params": 1, "mul": 4 * N + 1, "add": 2 * N, "other": N},
    # kappa x, times 1/lambda, x * APA; the shift and + 1e-8 once; softplus, exp; relu, log, reciprocal once
    ("apa", ()): {"params": 2, "mul": 3 * N, "add": N + 1, "other": 2 * N + 3},
}


@pytest.mark.parametrize("name, options", HAND)
def test_cost_analytic_equals_dispatch_count_equals_hand_count(name, options):
    hand, options = HAND[name, options], dict(options)
    analytic = activation_complexity(name, 8, SHAPE, **options)
    counted = count(create_activation(name, 8, **options), SHAPE)
    assert analytic["params"] == counted.params == hand["params"]
    assert analytic["macs"] == counted.macs == 0
    want = {"sigmoid": 0, "mul": hand["mul"], "add": hand["add"], "mean": 0, "other": hand["other"]}
    assert analytic["elementwise"] == want
    assert counted.uncounted == () and counted.elementwise == want  # APA's log of lambda counted as "other"


# ---------------------------------------------------------------- placement

RIVALS = {"pau": PAU, "smu": SMU, "smu1": SMU1, "apa": AGLU}


def _tiny_basic_resnet(*, num_classes=10, in_channels=3, small_input=False):
    """torchvision's ResNet with one BasicBlock per stage: 9 ReLU call sites."""
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


MODELS = {"torchvision": (_tiny_basic_resnet, 9), "cifar": ("resnet20", 19), "timm_tokens": ("timm/test_vit", None)}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("rival", RIVALS)
def test_every_site_of_a_torchvision_cifar_and_timm_model_gets_the_rival(rival, model):
    name, n_sites = MODELS[model]
    torch.manual_seed(0)
    net, sites = ablation.build_model(name, activation=rival, num_classes=10, input_size=32)
    assert sites and (n_sites is None or len(sites) == n_sites)
    modules = [net.get_submodule(s.target) for s in sites]
    assert all(type(m) is RIVALS[rival] and m.channels == s.width for m, s in zip(modules, sites))
    assert len({id(m) for m in modules}) == len(sites)  # one module (one coefficient set) per call site
    if model == "timm_tokens":
        assert all(s.channel_dim == 2 for s in sites)  # N x L x C MLP activations
    y = net.eval()(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
