"""The Registry contract (entries, metadata, options), and the baseline activations ACON is compared with."""
import pytest
import torch
from torch.nn import functional as F

from acon import ACTIVATIONS, GENERATORS, Registry, UnknownNameError, UnknownOptionError, create_activation, get_activation
from acon.registry import check_options, keyword_options


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


def test_entry_carries_declared_metadata_with_defaults():
    reg = Registry("widget", meta={"size": 224, "small": False})
    reg.register("a", len, size=32)
    reg.register("b", abs, help="absolute")
    assert dict(reg.entry("a").meta) == {"size": 32, "small": False}
    assert dict(reg.entry("b").meta) == {"size": 224, "small": False}
    assert reg.entry("b").help == "absolute" and reg.entry("b").obj is abs
    with pytest.raises(TypeError):
        reg.entry("a").meta["size"] = 1  # read-only: an entry is what was registered


def test_decorator_registration_keeps_metadata():
    reg = Registry("widget", meta={"arg": None})

    @reg.register("first", arg="K")
    def first(sites, arg):
        return sites

    assert reg.entry("first").meta["arg"] == "K" and reg.get("first") is first


def test_undeclared_metadata_is_refused_naming_the_valid_fields():
    reg = Registry("widget", meta={"input_size": 224})
    with pytest.raises(TypeError, match="no metadata input_sise; valid: input_size"):
        reg.register("a", len, input_sise=32)
    assert "a" not in reg
    with pytest.raises(TypeError, match="valid: none"):
        _fresh().register("a", len, cost=1)


def test_unregister_removes_the_entry_and_refuses_unknown_names():
    reg = _fresh()
    reg.register("a", len)
    assert reg.unregister("a").obj is len
    assert "a" not in reg and len(reg) == 0
    with pytest.raises(UnknownNameError, match="unknown widget 'a'"):
        reg.unregister("a")


def test_temporary_registration_is_gone_after_the_block_even_on_error():
    reg = _fresh()
    with reg.temporary("a", len) as obj:
        assert obj is len and reg.get("a") is len
    assert "a" not in reg
    with pytest.raises(RuntimeError), reg.temporary("b", abs):
        raise RuntimeError("boom")
    assert "b" not in reg


def test_temporary_override_restores_the_replaced_entry():
    reg = Registry("widget", meta={"size": 1})
    reg.register("a", len, size=2)
    with pytest.raises(ValueError, match="already registered"), reg.temporary("a", abs):
        pass
    with reg.temporary("a", abs, override=True, size=3):
        assert reg.get("a") is abs and reg.entry("a").meta["size"] == 3
    assert reg.get("a") is len and reg.entry("a").meta["size"] == 2


def test_entry_of_a_callable_is_unregistered_with_default_metadata():
    reg = Registry("widget", meta={"size": 224})
    entry = reg.entry(abs)
    assert entry.obj is abs and entry.meta["size"] == 224 and "abs" not in reg


def _channels_and_options(channels, r=16, *, bn=True):
    return channels


@pytest.mark.parametrize("factory, expected", [
    (_channels_and_options, {"r", "bn"}),
    (lambda channels: None, set()),
    (lambda channels, **kw: None, None),
    (torch.nn.PReLU, {"init", "device", "dtype"}),  # num_parameters is the channels
])
def test_keyword_options_are_read_from_the_signature_past_the_channels(factory, expected):
    options = keyword_options(factory)
    assert (options if options is None else set(options)) == expected


def test_entry_options_prefer_the_registered_metadata():
    reg = Registry("widget", meta={"options": None})
    reg.register("derived", _channels_and_options)
    reg.register("given", _channels_and_options, options=("r",))
    assert reg.entry("derived").options == {"r", "bn"}
    assert reg.entry("given").options == {"r"}


def test_check_options_names_the_unknown_and_the_valid_options():
    with pytest.raises(UnknownOptionError, match=r"thing does not accept option 'rr' \(did you mean 'r'\?\); valid options: bn, r"):
        check_options("thing", {"rr": 1, "r": 2}, frozenset({"r", "bn"}))
    check_options("thing", {"anything": 1}, None)  # None accepts any
    assert issubclass(UnknownOptionError, TypeError) and issubclass(UnknownOptionError, ValueError)


@pytest.mark.parametrize("registry", [ACTIVATIONS, GENERATORS], ids=lambda r: r.name)
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
    assert str(info.value).endswith("valid choices: " + ", ".join(sorted(GENERATORS.names())))


def test_required_activation_and_generator_names_are_registered():
    required = {"relu", "leaky_relu", "prelu", "silu", "swish", "mish", "gelu", "identity",
                "acon_a", "acon_b", "acon_c", "meta_acon"}
    assert required <= set(ACTIVATIONS.names())
    assert {"channel", "layer", "pixel", "learned", "fixed"} <= set(GENERATORS.names())


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


@pytest.mark.parametrize("name", sorted(set(BASELINES) - {"prelu"}))
def test_elementwise_baselines_take_no_option(name):
    with pytest.raises(UnknownOptionError, match=f"activation '{name}' does not accept option 'channel_dim'; valid options: none"):
        create_activation(name, 4, channel_dim=-1)


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


def test_model_entries_carry_input_size_and_native_small():
    import ablation

    assert dict(ablation.MODELS.entry("tiny_cnn").meta) == {"input_size": 8, "native_small": True}
    assert dict(ablation.MODELS.entry("resnet20").meta) == {"input_size": 32, "native_small": True}
    assert dict(ablation.MODELS.entry("inception_v3").meta) == {"input_size": 299, "native_small": False}
    assert [ablation.default_input_size(n, small) for n, small in
            [("tiny_cnn", True), ("resnet20", False), ("resnet18", True), ("resnet18", False)]] == [8, 32, 32, 224]


def test_a_user_model_registers_its_metadata_through_register_model():
    import ablation

    with ablation.MODELS.temporary("test_net", len, input_size=64, native_small=True):
        assert ablation.default_input_size("test_net", small_input=True) == 64
    with pytest.raises(TypeError, match="valid: input_size, native_small"):
        ablation.register_model("test_net", len, input=64)
    assert "test_net" not in ablation.MODELS


def test_placement_entries_say_which_take_an_argument():
    import ablation

    args = {name: ablation.PLACEMENTS.entry(name).meta["arg"] for name in ablation.PLACEMENTS}
    assert args == {"all": None, "none": None, "bottleneck_3x3": None, "last_stage": None,
                    "first": "K", "last": "K", "stage": "I", "glob": "PATTERN"}
    with pytest.raises(ValueError, match="placement stage:I needs its I, e.g. 'stage:2'"):
        ablation.parse_placement("stage")


def test_the_acon_package_exports_resolve_lazily_and_match_their_modules():
    """``acon``'s names load on first use (so the CLI's help needs no torch); each is its module's own object,
    and importing ``acon.activations`` alone registers every built-in activation, se_control included."""
    import subprocess
    import sys

    probe = ("import sys, acon, acon.registry; loaded = 'torch' in sys.modules\n"
             "from acon.activations import ACTIVATIONS\n"
             "import importlib\n"
             "same = all(getattr(acon, n) is getattr(importlib.import_module(acon._MODULE_OF[n]), n) "
             "for n in acon.__all__)\n"
             "print(loaded, same, sorted(acon.__all__) == sorted(acon._MODULE_OF), 'se_control' in ACTIVATIONS)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stderr
    import acon

    with pytest.raises(AttributeError, match="no attribute 'Acon'"):
        acon.Acon
