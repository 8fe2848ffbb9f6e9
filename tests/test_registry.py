"""The Registry contract, and the baseline activations the ACON variants are compared with."""
import pytest
import torch
from torch.nn import functional as F

from acon import ACTIVATIONS, BETA_GENERATORS, Registry, UnknownNameError, create_activation, get_activation


def _fresh() -> Registry:
    return Registry("widget", doc="factory() -> widget")


def test_register_as_decorator_returns_the_object_and_resolves_it():
    reg = _fresh()

    @reg.register("a")
    def make_a():
        """Make an a."""
        return 1

    assert make_a() == 1  # the decorator hands the function back unchanged
    assert reg.get("a") is make_a
    assert reg.help("a") == "Make an a."


def test_register_as_call_with_help_text():
    reg = _fresh()
    obj = reg.register("b", len, help="count things")
    assert obj is len
    assert reg.get("b") is len
    assert reg.help("b") == "count things"
    assert "b" in reg and len(reg) == 1


def test_duplicate_name_is_refused_unless_override():
    reg = _fresh()
    reg.register("a", len)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a", abs)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(abs)
    assert reg.get("a") is len
    reg.register("a", abs, override=True)
    assert reg.get("a") is abs


@pytest.mark.parametrize("bad", ["", None, 3])
def test_non_string_or_empty_name_is_refused(bad):
    with pytest.raises(ValueError, match="non-empty strings"):
        _fresh().register(bad, len)


@pytest.mark.parametrize("thing", [len, torch.nn.ReLU, torch.nn.ReLU(), lambda c: c])
def test_get_passes_callables_straight_through(thing):
    assert _fresh().get(thing) is thing


def test_names_are_sorted_whatever_the_registration_order():
    reg = _fresh()
    for name in ["zeta", "alpha", "Mid", "beta"]:
        reg.register(name, len)
    assert reg.names() == ["Mid", "alpha", "beta", "zeta"]
    assert list(reg) == reg.names()


def test_unknown_name_lists_sorted_choices_and_is_key_and_value_error():
    reg = _fresh()
    for name in ["zeta", "alpha", "beta"]:
        reg.register(name, len)
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert message.endswith("valid choices: alpha, beta, zeta")
    assert "did you mean 'alpha'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("registry", [ACTIVATIONS, BETA_GENERATORS], ids=lambda r: r.name)
def test_project_registries_list_names_sorted(registry):
    assert registry.names() == sorted(registry.names())
    assert len(registry) >= 5


def test_unknown_activation_error_lists_every_activation_sorted():
    with pytest.raises(UnknownNameError) as info:
        create_activation("relu6", 4)
    assert str(info.value).endswith("valid choices: " + ", ".join(sorted(ACTIVATIONS.names())))


def test_unknown_generator_error_lists_every_generator_sorted():
    with pytest.raises(UnknownNameError) as info:
        create_activation("meta_acon", 4, generator="spatial")
    assert str(info.value).endswith("valid choices: " + ", ".join(sorted(BETA_GENERATORS.names())))


def test_required_activation_and_generator_names_are_registered():
    required = {"relu", "leaky_relu", "prelu", "silu", "swish", "mish", "gelu", "identity",
                "acon_a", "acon_b", "acon_c", "meta_acon"}
    assert required <= set(ACTIVATIONS.names())
    assert {"channel", "layer", "pixel", "learned", "fixed"} <= set(BETA_GENERATORS.names())


def _prelu_reference(x):
    # nn.PReLU starts with slope 0.25 for every channel
    return torch.where(x >= 0, x, 0.25 * x)


BASELINES = {
    "relu": lambda x: torch.clamp(x, min=0),
    "leaky_relu": lambda x: torch.where(x >= 0, x, 0.01 * x),
    "prelu": _prelu_reference,
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "swish": lambda x: x / (1 + torch.exp(-x)),
    "mish": lambda x: x * torch.tanh(torch.log1p(torch.exp(x))),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / 2 ** 0.5)),
    "identity": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_computes_what_its_name_says(name):
    x = torch.linspace(-6, 6, 4 * 25).reshape(1, 4, 5, 5)
    module = create_activation(name, 4)
    torch.testing.assert_close(module(x), BASELINES[name](x), atol=1e-6, rtol=1e-5)


def test_prelu_has_one_slope_per_channel():
    module = create_activation("prelu", 6)
    assert module.weight.shape == (6,)


def test_get_activation_resolves_a_name_and_passes_a_factory_through():
    def factory(channels, **_):
        return torch.nn.Hardswish()

    assert get_activation(factory) is factory
    assert isinstance(create_activation(factory, 3), torch.nn.Hardswish)
    assert get_activation("silu") is ACTIVATIONS.get("silu")
    assert torch.equal(create_activation("swish", 2)(torch.ones(1, 2)), F.silu(torch.ones(1, 2)))
