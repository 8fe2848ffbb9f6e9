"""The parameter-matched control se_control: formula, parameter count against meta-ACON, plumbing of r and original=."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ablation
import acon
from acon.gated import GatedActivation
from studies.catalog import load_study
from studies.spec import design_cell


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("channels,r", [(64, 16), (16, 8), (256, 4), (24, 24)])
def test_control_has_meta_acons_parameters_less_p1_and_p2(channels, r):
    control = acon.create_activation("se_control", channels, r=r)
    meta = acon.create_activation("meta_acon", channels, generator="channel", r=r)
    assert _count(meta) - _count(control) == 2 * channels  # within 2C, as promised: exactly p1 and p2
    assert control.gate.fc1.out_channels == meta.fc1.out_channels == max(r, channels // r)


def test_control_is_the_activation_times_the_squeeze_excite_gate():
    torch.manual_seed(0)
    act = GatedActivation(32, 8).eval()
    for bn in (act.gate.bn1, act.gate.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 32, 5, 7)
    g = act.gate
    z = F.conv2d(x.mean((2, 3), keepdim=True), g.fc1.weight, g.fc1.bias)
    z = F.batch_norm(z, g.bn1.running_mean, g.bn1.running_var, g.bn1.weight, g.bn1.bias, eps=g.bn1.eps)
    z = F.conv2d(z, g.fc2.weight, g.fc2.bias)
    z = F.batch_norm(z, g.bn2.running_mean, g.bn2.running_var, g.bn2.weight, g.bn2.bias, eps=g.bn2.eps)
    torch.testing.assert_close(act(x), torch.relu(x) * torch.sigmoid(z))


def test_control_keeps_the_original_activation_as_a_private_out_of_place_copy():
    shared = nn.ReLU(inplace=True)
    a = acon.create_activation("se_control", 8, r=2, original=shared)
    b = acon.create_activation("se_control", 8, r=2, original=shared)
    assert a.act is not shared and a.act is not b.act and not a.act.inplace and shared.inplace
    x = torch.randn(2, 8, 3, 3)
    before = x.clone()
    a.eval()(x)
    torch.testing.assert_close(x, before)  # the input the gate reads is not overwritten
    silu = acon.create_activation("se_control", 8, r=2, original=nn.SiLU()).eval()
    torch.testing.assert_close(silu(x), F.silu(x) * silu.gate(x))


def test_control_reads_channels_on_any_axis():
    act = GatedActivation(6, 2, channel_dim=-1).eval()
    x = torch.randn(2, 5, 6)  # (N, L, C)
    ref = GatedActivation(6, 2).eval()
    ref.load_state_dict(act.state_dict())
    torch.testing.assert_close(act(x), ref(x.movedim(-1, 1)).movedim(1, -1))


def test_design_cell_and_build_model_pass_r_to_the_control():
    assert design_cell({"activation": "se_control", "r": 8})["r"] == 8
    assert design_cell({"activation": "relu", "r": 8})["r"] == "-"
    control, sites = ablation.build_model("tiny_cnn", activation="se_control", r=4, placement="all", in_channels=1)
    meta, meta_sites = ablation.build_model("tiny_cnn", activation="meta_acon", generator="channel", r=4,
                                            placement="all", in_channels=1)
    assert len(sites) == len(meta_sites) > 0
    assert _count(meta) - _count(control) == 2 * sum(s.width for s in sites)
    assert all(m.r == 4 for m in control.modules() if isinstance(m, GatedActivation))


@pytest.mark.parametrize("study", ["design_space", "variants"])
def test_paper_presets_run_the_control_at_meta_acons_r(study):
    spec = load_study(study)
    # typed presets (Study.for_preset) and plain dict presets alike
    designs = spec.for_preset("paper").designs if hasattr(spec, "for_preset") else spec.settings("paper")["designs"]
    controls = [d for d in designs if d["activation"] == "se_control"]
    meta_r = {d["r"] for d in designs if d.get("generator") == "channel"}
    assert len(controls) == 1 and {controls[0]["r"]} == meta_r
    assert "se_control" not in {d["activation"] for d in spec.designs}  # quick and default presets unchanged
    assert "se_control" in acon.ACTIVATIONS.names() and "gate" in acon.ACTIVATIONS.help("se_control")
