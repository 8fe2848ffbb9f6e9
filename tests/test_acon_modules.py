"""ACON modules: layouts, parameters, official state_dict compatibility, bad input, registry builds."""
import pytest
import torch
from torch import nn

from acon import (
    ACTIVATIONS, GENERATORS, AconA, AconB, AconC, ChannelBeta, LayerBeta, MetaAcon, MetaAconC, PixelBeta,
    UnknownOptionError, activation_options, create_activation, hidden_width,
)


class OfficialAconC(nn.Module):
    """Copy of ``AconC`` from nmaac/ACON.pytorch (acon.py, April 2021)."""

    def __init__(self, width):
        super().__init__()
        self.p1 = nn.Parameter(torch.randn(1, width, 1, 1))
        self.p2 = nn.Parameter(torch.randn(1, width, 1, 1))
        self.beta = nn.Parameter(torch.ones(1, width, 1, 1))

    def forward(self, x):
        return (self.p1 * x - self.p2 * x) * torch.sigmoid(self.beta * (self.p1 * x - self.p2 * x)) + self.p2 * x


class OfficialMetaAconC(nn.Module):
    """Copy of ``MetaAconC`` from nmaac/ACON.pytorch (acon.py, April 2021)."""

    def __init__(self, width, r=16):
        super().__init__()
        self.fc1 = nn.Conv2d(width, max(r, width // r), kernel_size=1, stride=1, bias=True)
        self.bn1 = nn.BatchNorm2d(max(r, width // r))
        self.fc2 = nn.Conv2d(max(r, width // r), width, kernel_size=1, stride=1, bias=True)
        self.bn2 = nn.BatchNorm2d(width)
        self.p1 = nn.Parameter(torch.randn(1, width, 1, 1))
        self.p2 = nn.Parameter(torch.randn(1, width, 1, 1))

    def forward(self, x):
        beta = torch.sigmoid(
            self.bn2(self.fc2(self.bn1(self.fc1(x.mean(dim=2, keepdims=True).mean(dim=3, keepdims=True)))))
        )
        return (self.p1 * x - self.p2 * x) * torch.sigmoid(beta * (self.p1 * x - self.p2 * x)) + self.p2 * x


# name -> builder(channels, **kw); r=2 keeps the channel-wise generator valid for tiny widths
MODULES = {
    "acon_a": lambda c, **kw: AconA(c, **kw),
    "acon_b": lambda c, **kw: AconB(c, **kw),
    "acon_c": lambda c, **kw: AconC(c, **kw),
    "meta_acon_c": lambda c, **kw: MetaAconC(c, r=2, **kw),
    "meta_acon_layer": lambda c, **kw: MetaAcon(c, LayerBeta(c), **kw),
    "meta_acon_pixel": lambda c, **kw: MetaAcon(c, PixelBeta(c), **kw),
}
# each module's own per-channel parameters (generator parameters excluded)
OWN_PARAMS = {
    "acon_a": ["beta"], "acon_b": ["p", "beta"], "acon_c": ["p1", "p2", "beta"],
    "meta_acon_c": ["p1", "p2"], "meta_acon_layer": ["p1", "p2"], "meta_acon_pixel": ["p1", "p2"],
}
pytestmark = pytest.mark.usefixtures("single_thread")

C = 4


def _twin(name, **kw):
    """Two modules with identical weights: channels at dim 1 and at ``kw['channel_dim']``."""
    first = MODULES[name](C)
    other = MODULES[name](C, **kw)
    other.load_state_dict(first.state_dict(), strict=True)
    return first, other


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("shape", [(3, C, 5, 2), (3, C), (3, C, 7), (3, C, 2, 2, 2)], ids=str)
def test_module_keeps_the_input_shape_for_channels_first_inputs(name, shape):
    y = MODULES[name](C)(torch.randn(shape))
    assert y.shape == shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_channel_dim_last_on_nlc_equals_channels_first_on_transposed_input(name, device):
    first, last = (m.to(device) for m in _twin(name, channel_dim=-1))
    x = torch.randn(3, 7, C).to(device)  # (N, L, C) with L != C so a wrong axis cannot pass
    expected = first(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(last(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nc_input_equals_nchw_input_with_one_pixel(name):
    module = MODULES[name](C)
    x = torch.randn(3, C)
    torch.testing.assert_close(module(x), module(x[:, :, None, None])[:, :, 0, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_channel_dim_last_on_nc_input_is_the_same_axis(name):
    first, last = _twin(name, channel_dim=-1)
    x = torch.randn(3, C)
    torch.testing.assert_close(last(x), first(x), rtol=0, atol=0)


SPATIAL_ONLY = {"frelu"}  # a k x k conv over a grid: tokens (N, L, C) are refused in one line


@pytest.mark.parametrize("layout", ["tokens", "grid"])
@pytest.mark.parametrize("name", [n for n in ACTIVATIONS.names() if "channel_dim" in activation_options(n)])
def test_every_registered_activation_honours_channel_dim_last(name, layout):
    first = create_activation(name, C)
    last = create_activation(name, C, channel_dim=-1)
    last.load_state_dict(first.state_dict(), strict=True)
    with torch.no_grad():  # give PReLU distinct slopes so a wrong axis shows
        for p in first.parameters():
            p.copy_(torch.randn_like(p))
        last.load_state_dict(first.state_dict())
    x = torch.randn(3, 5, C) if layout == "tokens" else torch.randn(3, 4, 5, C)
    order = (0, 2, 1) if layout == "tokens" else (0, 3, 1, 2)
    if layout == "tokens" and name in SPATIAL_ONLY:
        with pytest.raises(ValueError, match="spatial grid"):
            last(x)
        return
    back = [order.index(i) for i in range(len(order))]
    torch.testing.assert_close(last(x), first(x.permute(order)).permute(back), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- parameters and init


@pytest.mark.parametrize("name", sorted(MODULES))
def test_own_parameters_are_per_channel_with_official_shape(name):
    module = MODULES[name](6)
    for pname in OWN_PARAMS[name]:
        assert getattr(module, pname).shape == (1, 6, 1, 1), pname
        assert isinstance(getattr(module, pname), nn.Parameter), pname


def test_acon_c_initialises_exactly_as_the_official_release():
    torch.manual_seed(7)
    official = OfficialAconC(5).state_dict()
    torch.manual_seed(7)
    ours = AconC(5).state_dict()
    assert list(ours) == ["p1", "p2", "beta"]
    for key in official:
        assert torch.equal(ours[key], official[key]), key
    assert torch.equal(ours["beta"], torch.ones(1, 5, 1, 1))


def test_meta_acon_c_initialises_exactly_as_the_official_release():
    torch.manual_seed(7)
    official = OfficialMetaAconC(32, r=8).state_dict()
    torch.manual_seed(7)
    ours = MetaAconC(32, r=8).state_dict()
    assert list(ours) == list(official)
    for key in official:
        assert torch.equal(ours[key], official[key]), key


def test_acon_a_and_acon_b_default_init_is_beta_one_and_p_randn():
    torch.manual_seed(3)
    expected_p = torch.randn(1, 5, 1, 1)
    torch.manual_seed(3)
    b = AconB(5)
    assert torch.equal(b.p, expected_p)
    assert torch.equal(b.beta, torch.ones(1, 5, 1, 1))
    assert torch.equal(AconA(5).beta, torch.ones(1, 5, 1, 1))


INIT_CASES = [(name, p) for name in sorted(OWN_PARAMS) for p in OWN_PARAMS[name]]


@pytest.mark.parametrize("name,pname", INIT_CASES)
def test_init_can_be_overridden_with_a_number(name, pname):
    module = MODULES[name](C, **{pname: -0.75})
    assert torch.equal(getattr(module, pname), torch.full((1, C, 1, 1), -0.75))


@pytest.mark.parametrize("name,pname", INIT_CASES)
def test_init_can_be_overridden_with_an_in_place_init_function(name, pname):
    module = MODULES[name](C, **{pname: lambda t: nn.init.constant_(t, 0.125)})
    assert torch.equal(getattr(module, pname), torch.full((1, C, 1, 1), 0.125))


def test_init_function_returning_a_new_tensor_is_used():
    module = AconC(C, p1=lambda t: torch.arange(C, dtype=torch.float32))
    assert torch.equal(module.p1.flatten(), torch.arange(C, dtype=torch.float32))
    with pytest.raises(ValueError, match="3 values for 4 channels"):
        AconC(C, p2=lambda t: torch.zeros(3))


# ---------------------------------------------------------------- state_dict layouts


def test_acon_c_state_dict_keys_are_exactly_p1_p2_beta():
    assert list(AconC(C).state_dict()) == ["p1", "p2", "beta"]
    assert sorted(n for n, _ in AconC(C).named_parameters()) == ["beta", "p1", "p2"]


def test_acon_c_loads_official_state_dict_strict_both_ways(device):
    official, ours = OfficialAconC(C).to(device), AconC(C).to(device)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, C, 3, 3).to(device)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-6, atol=1e-6)
    fresh = AconC(C, beta=2.5).to(device)
    official.load_state_dict(fresh.state_dict(), strict=True)
    torch.testing.assert_close(official(x), fresh(x), rtol=1e-6, atol=1e-6)


def test_fixed_beta_is_a_buffer_not_a_parameter():
    module = create_activation("meta_acon", C, generator="fixed", beta=3.0)
    assert isinstance(module, AconC)
    assert sorted(n for n, _ in module.named_parameters()) == ["p1", "p2"]
    assert torch.equal(module.beta, torch.full((1, C, 1, 1), 3.0))
    assert list(module.state_dict()) == ["p1", "p2", "beta"]


def _official_keys_and_shapes(width, r):
    return {k: tuple(v.shape) for k, v in OfficialMetaAconC(width, r).state_dict().items()}


@pytest.mark.parametrize("width,r", [(32, 8), (24, 16), (64, 16), (8, 16), (1, 16), (3, 5)])
def test_meta_acon_c_keys_and_shapes_equal_the_official_module(width, r):
    ours = {k: tuple(v.shape) for k, v in MetaAconC(width, r=r).state_dict().items()}
    assert ours == _official_keys_and_shapes(width, r)
    assert ours["fc1.weight"] == (max(r, width // r), width, 1, 1)


def _randomise_bn(module, x):
    """Give BN non-trivial affine weights and running stats, as a trained checkpoint has."""
    with torch.no_grad():
        for bn in (module.bn1, module.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    module.train()
    for _ in range(3):
        module(x + torch.randn_like(x))


@pytest.mark.parametrize("width,r", [(32, 8), (24, 16), (8, 16)])
def test_meta_acon_c_loads_official_state_dict_strict(width, r, device, ieee_fp32):
    x = torch.randn(4, width, 3, 3).to(device)
    official = OfficialMetaAconC(width, r).to(device)
    _randomise_bn(official, x)
    ours = MetaAconC(width, r=r).to(device)
    ours.load_state_dict(official.state_dict(), strict=True)
    # train mode: batch statistics, and running stats move identically
    torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-6)
    for key, value in official.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # eval mode: running statistics
    ours.eval(), official.eval()
    torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width,r", [(32, 8), (24, 16), (8, 16)])
def test_official_meta_acon_c_loads_our_state_dict_strict(width, r, device, ieee_fp32):
    x = torch.randn(4, width, 3, 3).to(device)
    ours = MetaAconC(width, r=r).to(device)
    _randomise_bn(ours, x)
    official = OfficialMetaAconC(width, r).to(device)
    official.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(official(x), ours(x), rtol=1e-5, atol=1e-6)
    ours.eval(), official.eval()
    torch.testing.assert_close(official(x), ours(x), rtol=1e-5, atol=1e-6)


def test_meta_acon_c_without_bn_drops_bn_keys():
    keys = set(MetaAconC(32, r=8, bn=False).state_dict())
    assert keys == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "p1", "p2"}


def test_meta_acon_c_without_bias_drops_fc_biases_only():
    ours = set(MetaAconC(32, r=8, bias=False).state_dict())
    assert ours == set(_official_keys_and_shapes(32, 8)) - {"fc1.bias", "fc2.bias"}


@pytest.mark.parametrize("width,r,hidden", [(32, 8, 4), (24, 16, 1), (64, 16, 4), (8, 16, 1)])
def test_meta_acon_c_plain_width_rule_uses_c_over_r(width, r, hidden):
    sd = MetaAconC(width, r=r, width_rule="plain").state_dict()
    assert sd["fc1.weight"].shape == (hidden, width, 1, 1)
    assert sd["fc2.weight"].shape == (width, hidden, 1, 1)
    assert sd["bn1.running_mean"].shape == (hidden,)
    assert hidden_width(width, r, "plain") == hidden


def test_meta_acon_c_first_release_switches_give_its_layout():
    # Dec 2020 release: no BN, no bias, hidden C // 16
    sd = MetaAconC(64, r=16, width_rule="plain", bn=False, bias=False).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "fc1.weight": (4, 64, 1, 1), "fc2.weight": (64, 4, 1, 1), "p1": (1, 64, 1, 1), "p2": (1, 64, 1, 1),
    }


def test_meta_acon_c_without_bn_trains_on_batch_of_one():
    x = torch.randn(1, 8, 3, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        MetaAconC(8, r=2)(x)
    assert MetaAconC(8, r=2, bn=False)(x).shape == x.shape


@pytest.mark.parametrize("generator", ["layer", "pixel"])
def test_meta_acon_with_parameter_free_generator_has_only_p1_p2(generator):
    module = create_activation("meta_acon", C, generator=generator)
    assert isinstance(module, MetaAcon)
    assert list(module.state_dict()) == ["p1", "p2"]


def test_meta_acon_with_channel_generator_module_equals_meta_acon_c():
    official_layout = MetaAconC(8, r=2)
    generic = MetaAcon(8, ChannelBeta(8, r=2))
    generic.load_state_dict({("" if k in ("p1", "p2") else "generator.") + k: v
                             for k, v in official_layout.state_dict().items()}, strict=True)
    x = torch.randn(3, 8, 2, 2)
    torch.testing.assert_close(generic(x), official_layout(x), rtol=0, atol=0)


# ---------------------------------------------------------------- building through the registry


@pytest.mark.parametrize("generator,cls", [("channel", MetaAconC), ("learned", AconC), ("fixed", AconC),
                                           ("layer", MetaAcon), ("pixel", MetaAcon)])
def test_meta_acon_generator_name_selects_the_module(generator, cls):
    module = create_activation("meta_acon", 8, generator=generator)
    assert type(module) is cls
    assert module(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_meta_acon_generator_factory_is_passed_through():
    module = create_activation("meta_acon", C, generator=lambda c: PixelBeta(c))
    assert isinstance(module.generator, PixelBeta)


def test_meta_acon_learned_generator_has_a_learned_beta_starting_at_init():
    module = create_activation("meta_acon", 16, generator="learned", init=3.0)
    assert isinstance(module.beta, nn.Parameter)
    assert torch.equal(module.beta, torch.full((1, 16, 1, 1), 3.0))
    assert list(module.state_dict()) == ["p1", "p2", "beta"]  # AconC's keys: an official AconC checkpoint loads


def test_meta_acon_fixed_generator_gives_a_constant_beta():
    module = create_activation("meta_acon", 16, generator="fixed", beta=2.0)
    x = torch.randn(2, 16, 3, 3)
    module(x).sum().backward()
    assert torch.equal(module.beta, torch.full((1, 16, 1, 1), 2.0)) and not module.beta.requires_grad
    learned = AconC(16)
    learned.load_state_dict(module.state_dict(), strict=True)  # same keys; beta 2.0 loaded into the parameter
    torch.testing.assert_close(module(x), learned(x))


@pytest.mark.parametrize("name, options, attr, value", [
    ("acon_a", {"beta": 0.5}, "beta", 0.5),
    ("acon_b", {"p": -0.25, "beta": 2.0}, "p", -0.25),
    ("acon_c", {"p1": 1.5, "p2": 0.25, "beta": 4.0}, "p2", 0.25),
    ("meta_acon", {"generator": "layer", "p1": 0.75}, "p1", 0.75),
    ("meta_acon", {"generator": "channel", "p2": -1.0}, "p2", -1.0),
])
def test_documented_init_options_are_honoured(name, options, attr, value):
    module = create_activation(name, 6, **options)
    assert torch.equal(getattr(module, attr), torch.full((1, 6, 1, 1), value))


def test_meta_acon_channel_options_reach_the_module():
    module = create_activation("meta_acon", 64, generator="channel", r=4, width_rule="plain", bn=False, bias=False)
    assert module.fc1.weight.shape == (16, 64, 1, 1) and module.fc1.bias is None
    assert isinstance(module.bn1, nn.Identity) and isinstance(module.bn2, nn.Identity)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS.names()))
def test_every_activation_refuses_an_unknown_option_listing_the_valid_ones(name):
    valid = ", ".join(sorted(activation_options(name))) or "none"
    with pytest.raises(UnknownOptionError, match=f"does not accept option 'bogus'; valid options: {valid}$"):
        create_activation(name, 16, bogus=1)


def test_acon_c_unknown_option_message():
    with pytest.raises(UnknownOptionError) as info:
        create_activation("acon_c", 16, bogus=1)
    assert str(info.value) == ("activation 'acon_c' does not accept option 'bogus'; "
                               "valid options: beta, channel_dim, gate, learn_beta, p1, p2")


@pytest.mark.parametrize("generator, bad", [("layer", "r"), ("pixel", "bn"), ("learned", "beta"), ("fixed", "init")])
def test_meta_acon_refuses_an_option_its_generator_does_not_take(generator, bad):
    with pytest.raises(UnknownOptionError, match=f"generator '{generator}' does not accept option '{bad}'"):
        create_activation("meta_acon", 8, generator=generator, **{bad: 1})


@pytest.mark.parametrize("channels", [1, 8, 64])
@pytest.mark.parametrize("generator", sorted(GENERATORS.names()))
def test_every_generator_builds_a_meta_acon_that_backpropagates(generator, channels):
    module = create_activation("meta_acon", channels, generator=generator)
    x = torch.randn(2, channels, 3, 3, requires_grad=True)
    module(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        # a bias followed (through linear maps only) by train-mode BN gets a zero gradient by construction:
        # BN removes any per-channel constant; bn1.bias reaches bn2 through fc2 (exactly 0 at C=1, rounding noise else)
        if name not in ("fc1.bias", "fc2.bias", "bn1.bias"):
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels", [1, 8, 64])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS.names()))
def test_every_registered_activation_maps_shape_to_shape_with_gradients(name, channels, device):
    module = create_activation(name, channels).to(device)
    x = torch.randn(2, channels, 3, 3).to(device).requires_grad_()
    y = module(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("channel_dim,shape", [(1, (2, 5, 3, 3)), (1, (2, 5)), (-1, (2, 3, 5))], ids=str)
def test_wrong_channel_count_raises_value_error_naming_both_numbers(name, channel_dim, shape):
    module = MODULES[name](C, channel_dim=channel_dim)
    with pytest.raises(ValueError, match=r"\b5\b.*\b4\b"):
        module(torch.randn(shape))


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS.names() if n.startswith(("acon_", "meta_acon"))])
def test_registered_acon_activation_refuses_wrong_channel_count(name):
    with pytest.raises(ValueError, match=r"\b6\b.*\b4\b"):
        create_activation(name, C)(torch.randn(2, 6, 3, 3))


@pytest.mark.parametrize("r", [0, -1])
def test_reduction_below_one_raises_value_error(r):
    with pytest.raises(ValueError, match=f"r={r}"):
        MetaAconC(8, r=r)
    with pytest.raises(ValueError, match=f"r={r}"):
        create_activation("meta_acon", 8, r=r)


@pytest.mark.parametrize("channels, r, hidden", [(8, 16, 16), (8, 9, 9), (1, 1, 1), (3, 64, 64), (64, 3, 21)])
def test_any_reduction_of_one_or_more_suits_any_width_as_in_the_official_release(channels, r, hidden):
    module = MetaAconC(channels, r=r)  # hidden width max(r, C // r)
    assert module.fc1.out_channels == hidden == hidden_width(channels, r)
    assert module(torch.randn(2, channels, 3, 3)).shape == (2, channels, 3, 3)
    assert create_activation("meta_acon", channels, generator="channel", r=r).fc1.out_channels == hidden


@pytest.mark.parametrize("r", [2.0, True, "4", None])
def test_non_integer_reduction_raises_value_error_naming_the_allowed_range(r):
    with pytest.raises(ValueError, match=f"reduction ratio r must be an integer >= 1, got {r!r}"):
        MetaAconC(8, r=r)


def test_unknown_width_rule_lists_the_valid_rules():
    with pytest.raises(ValueError, match="valid choices: official, plain"):
        MetaAconC(8, r=2, width_rule="half")


@pytest.mark.parametrize("channels", [0, -3])
def test_non_positive_channel_count_raises_value_error(channels):
    with pytest.raises(ValueError, match=f"channels must be >= 1, got {channels}"):
        AconC(channels)


def test_channel_dim_on_batch_axis_or_a_1d_input_raises_value_error():
    with pytest.raises(ValueError, match="batch axis"):
        AconC(C, channel_dim=0)(torch.randn(C, C))
    with pytest.raises(ValueError, match="batch and a channel axis"):
        AconC(C)(torch.randn(C))


def test_unknown_option_for_the_channel_generator_raises_type_error_listing_valid_options():
    with pytest.raises(TypeError, match="'reduce'; valid options: bias, bn, channel_dim, gate, generator, p1, p2, r, width_rule"):
        create_activation("meta_acon", 8, generator="channel", reduce="mean")
