"""Per-site activation statistics (``ablation.activation_stats``): numbers checked by hand, no trace left."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ablation import activation_stats, build_model, list_generators, list_sites
from ablation.site_stats import SITE_COLUMNS, measure
from acon import AconA, AconB, AconC, MetaAcon
from acon.beta import ChannelBeta, LayerBeta, PixelBeta


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _inputs(n=6, c=2, hw=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, hw, hw, generator=g) * 2 + 0.5 for _ in range(2)]


def test_acon_c_with_hand_set_parameters_gives_hand_computed_statistics():
    act = AconC(2, p1=lambda p: p.copy_(torch.tensor([1.5, 0.2]).view(1, 2, 1, 1)),
                p2=lambda p: p.copy_(torch.tensor([-0.5, 0.2]).view(1, 2, 1, 1)),
                beta=lambda p: p.copy_(torch.tensor([2.0, 7.0]).view(1, 2, 1, 1)))
    batches = _inputs()
    row = activation_stats(nn.Sequential(act), batches).iloc[0]
    x = torch.cat(batches).numpy().astype(np.float64)
    p1, p2, beta = np.array([1.5, 0.2]), np.array([-0.5, 0.2]), np.array([2.0, 7.0])
    z = (beta * (p1 - p2))[None, :, None, None] * x
    assert row["linear_fraction"] == pytest.approx(np.mean(1 - np.abs(2 * _sigmoid(z) - 1)), rel=1e-5)
    assert row["beta_mean"] == pytest.approx(4.5) and row["beta_std_channels"] == pytest.approx(2.5)
    assert row["beta_std_samples"] == 0.0  # ACON-C's beta does not depend on the input
    assert (row["p1_mean"], row["p2_mean"]) == (pytest.approx(0.85), pytest.approx(-0.15))
    assert row["x_mean"] == pytest.approx(x.mean(), rel=1e-5) and row["x_std"] == pytest.approx(x.std(), rel=1e-5)
    assert (row["activation"], row["generator"], row["width"], row["stage"]) == ("acon_c", "learned", 2, 1)


@pytest.mark.parametrize("beta, p1, p2, expected", [
    (0.0, 1.0, -1.0, 1.0),   # beta = 0: the switch always sits at 1/2, the mean of p1 x and p2 x: linear
    (5.0, 0.7, 0.7, 1.0),    # p1 = p2: p1 x whatever beta
    (1e4, 1.0, 0.0, 0.0),    # a very sharp switch: max(x, 0) for every input seen
])
def test_linear_fraction_is_one_for_a_linear_site_and_near_zero_for_a_sharp_switch(beta, p1, p2, expected):
    act = AconC(3, p1=p1, p2=p2, beta=beta)
    frac = activation_stats(act, _inputs(c=3))["linear_fraction"].item()
    assert frac == pytest.approx(expected, abs=0.01)


def test_layer_wise_meta_acon_spread_across_inputs_is_the_std_of_its_per_sample_beta():
    act = MetaAcon(2, LayerBeta(2, reduce="mean"), p1=1.0, p2=0.0)
    batches = _inputs(n=5)
    row = activation_stats(act, batches).iloc[0]
    x = torch.cat(batches).double()
    beta = torch.sigmoid(x.mean(dim=(1, 2, 3)))  # one beta per sample
    assert row["beta_mean"] == pytest.approx(beta.mean().item(), rel=1e-5)
    assert row["beta_std_samples"] == pytest.approx(beta.std(unbiased=False).item(), rel=1e-4)
    assert row["beta_std_channels"] == pytest.approx(0.0, abs=1e-7)  # one beta for all channels
    assert (row["activation"], row["generator"]) == ("meta_acon", "layer")


def test_acon_a_and_b_are_acon_c_with_fixed_p1_and_p2():
    a = activation_stats(AconA(2, beta=3.0), _inputs()).iloc[0]
    b = activation_stats(AconB(2, p=0.25, beta=3.0), _inputs()).iloc[0]
    c = activation_stats(AconC(2, p1=1.0, p2=0.0, beta=3.0), _inputs()).iloc[0]
    assert (a["p1_mean"], a["p2_mean"], b["p1_mean"], b["p2_mean"]) == (1.0, 0.0, 1.0, 0.25)
    assert a["linear_fraction"] == pytest.approx(c["linear_fraction"], rel=1e-6)
    assert b["linear_fraction"] > a["linear_fraction"]  # |p1 - p2| is 0.75 instead of 1: a softer switch


def test_measuring_leaves_the_outputs_the_state_dict_and_the_mode_unchanged():
    model, _ = build_model("tiny_cnn", activation="meta_acon", generator="channel", r=4, in_channels=1, input_size=8)
    model.train()
    x = torch.randn(4, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    out = model(x)
    model.train()
    activation_stats(model, [torch.randn(16, 1, 8, 8) for _ in range(3)])
    assert model.training
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats included
    model.eval()
    assert torch.equal(model(x), out)


@pytest.mark.parametrize("activation, generator", [("meta_acon", g) for g in list_generators()]
                         + [("acon_a", None), ("acon_b", None), ("acon_c", None)])
def test_every_generator_and_acon_variant_gives_a_row_per_site(activation, generator):
    model, sites = build_model("tiny_cnn", activation=activation, generator=generator, r=4, in_channels=1, input_size=8)
    frame = activation_stats(model, [torch.randn(8, 1, 8, 8)])
    assert list(frame.columns) == list(SITE_COLUMNS)
    assert list(frame["path"]) == [s.path for s in sites] and list(frame["stage"]) == [s.stage for s in sites]
    assert frame["beta_mean"].notna().all() and frame["linear_fraction"].between(0, 1).all()
    assert list(frame["site"]) == list(range(len(sites))) and list(frame["width"]) == [s.width for s in sites]


def test_a_baseline_gets_input_rows_at_the_same_sites_as_the_surgery_finds_shared_modules_included():
    model, _ = build_model("resnet20", activation="relu", placement="none", small_input=True)
    frame = activation_stats(model, [torch.randn(2, 3, 32, 32)])
    found = list_sites(model, (1, 3, 32, 32))
    assert list(frame["path"]) == [s.path for s in found]  # layer1.0.relu#1, layer1.0.relu#2, ...
    assert list(frame["stage"]) == [s.stage for s in found] and list(frame["width"]) == [s.width for s in found]
    assert frame["beta_mean"].isna().all() and (frame["x_std"] > 0).all() and set(frame["activation"]) == {"relu"}


def test_meta_acon_only_in_the_last_stage_leaves_relu_rows_elsewhere():
    model, sites = build_model("resnet20", activation="meta_acon", generator="channel", r=4, placement="last_stage",
                               small_input=True)
    frame = activation_stats(model, [torch.randn(2, 3, 32, 32)], sites=sites)
    acon = frame[frame["activation"] == "meta_acon"]
    assert list(acon["path"]) == [s.path for s in sites] and set(acon["stage"]) == {3}
    assert (frame["activation"] == "relu").sum() == len(frame) - len(sites) > 0


def test_a_compiled_model_is_measured_like_the_eager_one_and_max_batches_is_honoured():
    model, _ = build_model("tiny_cnn", activation="meta_acon", generator="pixel", in_channels=1, input_size=8)
    batches = [torch.randn(8, 1, 8, 8) for _ in range(3)]
    eager = measure(model, batches, max_batches=2)
    compiled = measure(torch.compile(model), batches[:2])
    assert eager.sites.equals(compiled.sites)
    assert not measure(model, batches).sites.equals(eager.sites)  # the third batch counts when allowed
    with pytest.raises(ValueError, match="max_batches"):
        measure(model, batches, max_batches=0)


def test_channel_rows_give_each_channels_parameters_and_the_summary_averages_acon_sites():
    act = AconC(2, p1=lambda p: p.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)), p2=0.0, beta=0.0)
    stats = measure(nn.Sequential(act, nn.ReLU()), _inputs())
    assert list(stats.channels["p1"]) == [1.0, 2.0] and list(stats.channels["site"]) == [0, 0]
    assert stats.summary() == {"beta_mean": 0.0, "linear_fraction": 1.0}  # the ReLU row has no beta
    assert math.isnan(stats.sites.iloc[1]["beta_mean"]) and len(stats.sites) == 2


class _TokenMlp(nn.Module):
    """A Mixer's channel MLP on N x L x C tokens (L = 5, C = 8 at the GELU); the BatchNorm's stats must not move."""

    def __init__(self, tokens=5):
        super().__init__()
        self.fc, self.act, self.bn = nn.Linear(3, 8), nn.GELU(), nn.BatchNorm1d(tokens)

    def forward(self, x):
        return self.bn(self.act(self.fc(x)))


def test_a_baseline_on_tokens_reports_the_channel_dim_as_width_not_the_token_count():
    model = _TokenMlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = activation_stats(model, [torch.randn(4, 5, 3)]).iloc[0]
    assert (row["path"], row["width"]) == ("act", 8)  # N x L x C = 4 x 5 x 8: C, not the L = 5 tokens
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    baseline, _ = build_model(_Patches, activation="relu", placement="none", input_size=32)
    variant, sites = build_model(_Patches, activation="meta_acon", r=4, input_size=32)
    x = [torch.randn(2, 3, 32, 32)]
    widths = list(activation_stats(baseline, x)["width"])  # rows line up with the variant's, as for images
    assert widths == list(activation_stats(variant, x, sites=sites)["width"]) == [s.width for s in sites] == [8]


class _Patches(nn.Module):
    """A ViT at toy size: 8 x 8 patches of a 32 x 32 image (L = 16 tokens), the token MLP, a head."""

    def __init__(self, *, num_classes=10, in_channels=3, small_input=False):
        super().__init__()
        self.embed, self.mlp = nn.Conv2d(in_channels, 3, 8, stride=8), _TokenMlp(tokens=16)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.mlp(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


class _Untraceable(_TokenMlp):
    """Python control flow on a tensor: torch.fx cannot trace it."""

    def forward(self, x):
        return super().forward(x) if x.sum() > -1e9 else x


def test_a_model_fx_cannot_trace_is_still_measured_with_a_warning_and_axis_one():
    with pytest.warns(UserWarning, match="axis 1 assumed"):
        row = activation_stats(_Untraceable(), [torch.randn(4, 5, 3)]).iloc[0]
    assert (row["path"], row["width"]) == ("act", 5) and row["x_std"] > 0


def _meta(generator, gate="sigmoid", c=2):
    return MetaAcon(c, generator, p1=1.0, p2=0.0, gate=gate)


def _by_hand_spread(beta):
    """The std across samples (dim 0) of beta at each channel and position, averaged over channels and positions."""
    return beta.std(dim=0, unbiased=False).mean().item()


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_pixel_wise_spread_is_the_std_across_inputs_per_channel_and_position_averaged(gate):
    batches = _inputs(n=5, c=2, hw=3, seed=1)
    stats = measure(_meta(PixelBeta(2), gate), batches)
    x = torch.cat(batches).double()
    beta = torch.sigmoid(x)  # pixel-wise: one beta per element, beta = sigmoid(x)
    row = stats.sites.iloc[0]
    assert row["beta_std_samples"] == pytest.approx(_by_hand_spread(beta), rel=1e-5)
    per_channel = beta.std(dim=0, unbiased=False).mean(dim=(1, 2))
    assert list(stats.channels["beta_std_samples"]) == pytest.approx(per_channel.tolist(), rel=1e-5)
    assert row["beta_mean"] == pytest.approx(beta.mean().item(), rel=1e-6)
    centred = (x * beta / 3).clamp(-1, 1) if gate == "hard_sigmoid" else torch.tanh(x * beta / 2)  # 2 g(z) - 1
    assert row["linear_fraction"] == pytest.approx(1 - centred.abs().mean().item(), rel=1e-5)
    # averaging beta over positions first (the old column) gives a smaller number: the point of the definition
    assert _by_hand_spread(beta.mean(dim=(2, 3))) < 0.8 * row["beta_std_samples"]


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_channel_wise_spread_is_the_std_across_inputs_of_each_channels_beta_averaged(gate):
    gen = ChannelBeta(2, r=1, width_rule="plain", bn=False)  # fc1, fc2 set by hand: beta_c = sigmoid(2 mean_hw x_c - c)
    with torch.no_grad():
        gen.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)), gen.fc1.bias.zero_()
        gen.fc2.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1))
        gen.fc2.bias.copy_(torch.tensor([0.0, -1.0]))
    batches = _inputs(n=4, c=2, hw=3, seed=2)
    stats = measure(_meta(gen, gate), batches)
    x = torch.cat(batches).double()
    beta = torch.sigmoid(2 * x.mean(dim=(2, 3)) - torch.tensor([0.0, 1.0], dtype=torch.float64))  # (N, C)
    row = stats.sites.iloc[0]
    assert row["beta_std_samples"] == pytest.approx(_by_hand_spread(beta), rel=1e-5)
    assert list(stats.channels["beta_std_samples"]) == pytest.approx(beta.std(0, unbiased=False).tolist(), rel=1e-5)
    assert row["beta_std_channels"] == pytest.approx(beta.mean(0).std(unbiased=False).item(), rel=1e-5)
    z = x * beta[:, :, None, None]  # p1 - p2 = 1
    centred = (z / 3).clamp(-1, 1) if gate == "hard_sigmoid" else torch.tanh(z / 2)  # 2 g(z) - 1
    assert row["linear_fraction"] == pytest.approx(1 - centred.abs().mean().item(), rel=1e-5)


def test_a_spread_far_smaller_than_beta_survives_many_batches():
    """Beta near 0.5 that varies by 1e-5 across inputs: a sum of squares minus a squared sum would lose it."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(64, 2, 2, 2, generator=g) * 1e-4 for _ in range(8)]
    row = activation_stats(_meta(LayerBeta(2, reduce="mean")), batches).iloc[0]
    expected = _by_hand_spread(torch.sigmoid(torch.cat(batches).double().mean(dim=(1, 2, 3))))  # one beta per sample
    assert 5e-6 < expected < 2e-5
    assert row["beta_std_samples"] == pytest.approx(expected, rel=1e-3)


def test_the_depth_plot_band_is_mean_plus_minus_std_over_seeds_clipped_to_the_columns_range(monkeypatch, tmp_path):
    import report.learned as act

    drawn = []
    monkeypatch.setattr(act, "save", lambda fig, out_dir, stem: drawn.append((stem, fig)) or [])
    linear = {0: [0.2, 0.4, 0.9], 1: [0.95, 0.99, 0.6]}  # by site, one value per seed
    sites = pd.DataFrame([{"variant": "meta_acon", "seed": s, "site": i, "stage": 1, "beta_mean": 0.5 + 0.1 * s,
                           "linear_fraction": v[s], "beta_std_samples": 0.01, "generator": "channel"}
                          for i, v in linear.items() for s in range(3)])
    act.plot_activations(sites, pd.DataFrame(), tmp_path)
    fig = dict(drawn)["act_beta_by_depth"]
    for ax, column in zip(fig.axes, ("beta_mean", "linear_fraction")):
        band = ax.collections[0].get_paths()[0].vertices
        by_site = sites.groupby("site")[column]
        low, high = (by_site.mean() - by_site.std()).clip(0, 1), (by_site.mean() + by_site.std()).clip(0, 1)
        for site in (0, 1):
            ys = band[np.isclose(band[:, 0], site), 1]
            assert (ys.min(), ys.max()) == (pytest.approx(low[site]), pytest.approx(high[site]))
    assert "± std" in fig._suptitle.get_text()
