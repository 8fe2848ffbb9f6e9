"""Every activation call a model makes is a site, or is said not to be: timm models and blocks fx cannot enter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from acon import MetaAconC
from ablation import build_model, list_sites
from ablation.models import MODELS, create_model

timm = pytest.importorskip("timm")

#: The activation functions a site calls, listed here rather than read from the project (``nn.ReLU`` calls
#: ``F.relu``, ``nn.ReLU6`` calls ``F.hardtanh``): the sigmoid and hard-sigmoid gates of squeeze-excite are not.
_ACTIVATIONS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6, F.hardtanh,
                F.leaky_relu, F.elu, F.selu, F.celu, F.prelu, F.gelu, F.silu, F.hardswish, F.mish}


class _Count(TorchFunctionMode):
    """Activation calls at the function level; a mode sees each call once (nested torch calls run outside it)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func in _ACTIVATIONS
        return func(*args, **(kwargs or {}))


def _calls_of_timms_own_model(name: str, size: int) -> int:
    try:  # timm's own model, built here: img_size where it takes one (ViTs)
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=10)
    with torch.no_grad(), _Count() as count:
        model.eval()(torch.randn(1, 3, size, size))
    return count.calls


#: A MobileViT (blocks fx cannot enter), a ViT, convnets with squeeze-excite gates (sigmoid, hard-sigmoid) and
#: timm's batch-norm-act layers, a RegNet, an NF-Net (no-trace blocks fx can enter).
FAMILIES = ["mobilevit_xxs", "vit_tiny_patch16_224", "efficientnet_b0", "mobilenetv3_small_050", "regnetx_002",
            "nf_regnet_b0"]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_timm_models_sites_are_the_activation_calls_timms_own_model_makes(name):
    calls = _calls_of_timms_own_model(name, 32)
    sites = list_sites(create_model(f"timm/{name}", num_classes=10, input_size=32), (1, 3, 32, 32))
    assert len(sites) == calls > 0 and not getattr(sites, "unreplaced", ())


@pytest.mark.parametrize("name", ["mobilevit_xxs", "efficientnet_b0"])
def test_the_coverage_benchmarks_counter_agrees_with_this_one(name):
    from ablation.timm_survey import site_coverage

    coverage = site_coverage(name, size=32)
    assert coverage.complete and coverage.sites == coverage.calls == _calls_of_timms_own_model(name, 32)


def test_the_activations_inside_mobilevits_untraceable_block_are_replaced_and_train():
    model, sites = build_model("timm/mobilevit_xxs", activation="meta_acon", r=16, num_classes=10, input_size=32)
    inside = [s.path for s in sites if s.path.startswith("stages.2.1.")]  # a MobileVitBlock, kept whole for fx
    assert len(sites) == 34 and not sites.unreplaced and inside == [
        "stages.2.1.conv_kxk.bn.act", "stages.2.1.transformer.0.mlp.act", "stages.2.1.transformer.1.mlp.act",
        "stages.2.1.conv_proj.bn.act", "stages.2.1.conv_fusion.bn.act"]
    assert [s.width for s in sites if s.path.startswith("stages.2.1.transformer")] == [128, 128]
    act = model.get_submodule("stages.2.1.transformer.0.mlp.act")
    assert isinstance(act, MetaAconC) and act.channel_dim == 2
    out = model(torch.randn(2, 3, 32, 32))
    out.square().mean().backward()
    assert out.shape == (2, 10) and _grad(act) > 0


def _grad(m: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)


class _Untraceable(nn.Module):
    """A block fx cannot enter (it branches on a shape, as timm's MobileVitBlock does): a module activation called once, one called twice, and a
    function."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.act, self.shared = nn.Conv2d(c, c, 1), nn.ReLU(), nn.SiLU()

    def forward(self, x):
        x = self.act(self.conv(x))
        if x.shape[-1] > 1:  # fx cannot branch on a traced shape
            x = x + 1
        return F.gelu(self.shared(self.shared(x)))


def _net(*, num_classes=10, in_channels=3, small_input=False):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), _Untraceable(8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def test_calls_that_cannot_be_sites_are_counted_and_said_in_one_line_at_build_time():
    with pytest.warns(UserWarning) as said:
        model, sites = build_model(_net, activation="meta_acon", r=4, input_size=16)
    assert [s.path for s in sites] == ["1", "2.act"] and isinstance(model.get_submodule("2.act"), MetaAconC)
    assert [(c.path, c.kind, c.module) for c in sites.unreplaced] == [("2.shared", "silu", True)] * 2 + [
        ("2", "gelu", False)]
    lines = [str(w.message) for w in said if type(w.message).__name__ == "UnreplacedWarning"]
    assert lines == ["_net: 3 activation call(s) left unreplaced (inside blocks torch.fx cannot enter): "
                     "2.shared silu module x2, 2 gelu function"]
    from ablation.sites import unreplaced_summary

    assert unreplaced_summary(sites) in lines[0] and unreplaced_summary(list(sites)) == ""
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_the_run_time_counter_counts_module_and_function_calls_but_not_gates_or_constants():
    from ablation.sites import activation_calls

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.gate_fc, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.SiLU()
            self.register_buffer("table", torch.randn(4))

        def forward(self, x):
            x = F.relu(self.fc(x)) + torch.relu(self.table)  # the table's ReLU does not depend on the input
            return self.act(self.gate_fc(x)) * x  # a gated unit: its SiLU is a gate

    calls = activation_calls(Block(), torch.randn(2, 3, 4))
    assert [(c.kind, c.path, c.module, c.gate, c.channel_dim) for c in calls] == [
        ("relu", "", False, False, 2), ("silu", "act", True, True, 2)]


def test_a_real_error_building_a_timm_model_at_a_size_is_raised_not_hidden(monkeypatch):
    real = timm.create_model

    def refuse_small(arch, **kwargs):  # a ViT that cannot be built at a small size
        if arch.startswith("vit_") and kwargs.get("img_size", 224) < 224:
            raise ValueError(f"img_size {kwargs['img_size']} is too small for {arch}")
        return real(arch, **kwargs)

    monkeypatch.setattr(timm, "create_model", refuse_small)
    with pytest.raises(ValueError, match="img_size 32 is too small for vit_tiny_patch16_224"):
        create_model("timm/vit_tiny_patch16_224", input_size=32)
    assert create_model("timm/resnet10t", input_size=32).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


class _Plain(nn.Module):
    def __init__(self, num_classes, in_channels, small_input=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4, num_classes))

    def forward(self, x):
        return self.body(x)


def _forwarding(**kwargs):
    return _Plain(**kwargs)


def test_a_registered_factory_forwarding_its_kwargs_gets_no_input_size():
    with MODELS.temporary("forwarding_net", _forwarding):
        model, sites = build_model("forwarding_net", activation="acon_c", input_size=16)
    assert len(sites) == 1 and model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_a_factory_by_import_path_forwarding_its_kwargs_gets_only_what_it_names(tmp_path, monkeypatch):
    (tmp_path / "fwd.py").write_text("from torch import nn\n\ndef make(num_classes, in_channels, **kwargs):\n"
                                     "    return nn.Sequential(nn.Conv2d(in_channels, num_classes, 3), nn.ReLU(),"
                                     " nn.AdaptiveAvgPool2d(1), nn.Flatten(), **kwargs)\n")
    monkeypatch.chdir(tmp_path)
    model, _ = build_model("fwd.py:make", activation="relu", placement="none", input_size=16, num_classes=5)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)
