"""Site statistics of meta-ACON's rivals (``ablation.rival_stats``): numbers recomputed by hand from each module's
own parameters on the same inputs, ACON rows untouched, and the learned-curve plot drawing PAU / SMU / APA."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablation import activation_stats, build_model
from ablation.rival_stats import RIVAL_COLUMNS, rival_curve
from ablation.site_stats import SITE_COLUMNS
from acon.rivals.apa import AGLU
from acon.rivals.dy_relu import DyReLU
from acon.rivals.frelu import FReLU
from acon.rivals.pau import PAU
from acon.rivals.smu import SMU, SMU1

ACON_COLUMNS = ("site", "path", "stage", "width", "activation", "generator", "beta_mean", "beta_std_samples",
                "beta_std_channels", "p1_mean", "p2_mean", "linear_fraction", "x_mean", "x_std")


def _inputs(n=6, c=4, hw=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, hw, hw, generator=g) * 1.5 + 0.2 for _ in range(2)]


def _randomised(module, seed=1):
    """Every parameter and BN statistic moved away from its initial value, so that no piece or branch wins by default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=g), m.running_var.uniform_(0.5, 2.0, generator=g)
    return module


def _dy_relu_by_hand(act: DyReLU, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes and intercepts ``(N, K, C')`` from the paper's formula: residual ``2 sigmoid(fc2(relu(fc1(mean x)))) - 1``,
    ``a^k = alpha^k + lambda_a res``, ``b^k = lambda_b res``, alpha = (1, 0, ...), fc2's outputs a^1, b^1, a^2 ..."""
    fc1, fc2 = ((m.weight.double(), m.bias.double()) for m in (act.fc1, act.fc2))
    hidden = torch.relu(F.linear(x.double().mean(dim=(2, 3)), *fc1))
    res = (2 * torch.sigmoid(F.linear(hidden, *fc2)) - 1).reshape(x.shape[0], act.k, 2, act.width)
    alpha = torch.zeros(act.k, 1, dtype=torch.float64)
    alpha[0] = 1.0
    return alpha + 1.0 * res[:, :, 0], 0.5 * res[:, :, 1]


@pytest.mark.parametrize("variant, k", [("A", 2), ("B", 2), ("C", 3)])
def test_dy_relu_piece_shares_and_slopes_match_the_argmax_of_hand_computed_pieces(variant, k):
    act = _randomised(DyReLU(4, variant, k=k, r=2))
    batches = _inputs()
    row = activation_stats(act, batches).iloc[0]
    x = torch.cat(batches).double()
    slopes, intercepts = [], []
    for xb in batches:  # the hyper-function pools each sample alone: batching does not matter
        a, b = _dy_relu_by_hand(act, xb)
        slopes.append(a), intercepts.append(b)
    a, b = torch.cat(slopes), torch.cat(intercepts)
    pieces = torch.stack([x * a[:, i, :, None, None] + b[:, i, :, None, None] for i in range(k)])  # C's pi > 0: same argmax
    wins = pieces.argmax(0)
    for i in range(k):
        assert row[f"piece{i + 1}_share"] == pytest.approx((wins == i).double().mean().item(), abs=1e-12)
        assert row[f"piece{i + 1}_slope"] == pytest.approx(a[:, i].mean().item(), rel=1e-5)
    assert sum(row[f"piece{i + 1}_share"] for i in range(k)) == pytest.approx(1.0)
    assert 0 < row["piece1_share"] < 1  # both pieces win somewhere: the check has teeth
    assert (row["activation"], row["generator"]) == (f"dy_relu_{variant.lower()}", f"k={k}")
    assert np.isnan(row["branch_share"]) and np.isnan(row["beta_mean"])
    if k < 3:
        assert np.isnan(row["piece3_share"]) and np.isnan(row["piece3_slope"])


def test_dy_relu_with_more_than_three_pieces_adds_its_own_columns_after_the_fixed_ones():
    frame = activation_stats(_randomised(DyReLU(4, "B", k=4, r=2)), _inputs())
    assert list(frame.columns) == list(SITE_COLUMNS) + ["piece4_share", "piece4_slope"]
    assert frame[[f"piece{i}_share" for i in range(1, 5)]].sum(axis=1).item() == pytest.approx(1.0)


def test_frelu_branch_share_is_where_its_conv_and_bn_beat_the_input():
    act = _randomised(FReLU(4, 3))
    batches = _inputs()
    row = activation_stats(act, batches).iloc[0]
    x = torch.cat(batches)
    bn = act.bn_frelu
    t = F.conv2d(x, act.conv_frelu.weight, act.conv_frelu.bias, padding=1, groups=4)
    t = (t - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]
    assert row["branch_share"] == pytest.approx((t > x).double().mean().item(), abs=1e-12)
    assert 0.05 < row["branch_share"] < 0.95
    assert (row["activation"], row["generator"]) == ("frelu", "kernel_size=3")
    assert row[list(RIVAL_COLUMNS[:6])].isna().all() and np.isnan(row["curve_params"])


def test_frelu_on_a_fully_connected_input_counts_its_centre_tap():
    act = _randomised(FReLU(3, 3, bn=False))
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(4))
    share = activation_stats(act, [x]).iloc[0]["branch_share"]
    t = x * act.conv_frelu.weight[:, 0, 1, 1] + act.conv_frelu.bias  # a 1 x 1 grid: only the centre tap sees x
    assert share == pytest.approx((t > x).double().mean().item(), abs=1e-12)


@pytest.mark.parametrize("module, name, keys", [
    (PAU(), "pau", {"numerator", "denominator", "version"}),
    (SMU(mu=2.5), "smu", {"alpha", "mu"}),
    (SMU1(mu=0.3), "smu1", {"alpha", "mu"}),
    (AGLU(), "apa", {"kappa", "lambda"}),
])
def test_a_pointwise_rivals_curve_params_rebuild_its_forward(module, name, keys):
    with torch.no_grad():
        if name == "pau":
            _randomised(module, seed=5)
        if name == "apa":
            module.kappa_param.fill_(1.3), module.lambda_param.fill_(0.4)
    row = activation_stats(nn.Sequential(module), _inputs(c=2)).iloc[0]  # in a model, as the surgery places it
    params = json.loads(row["curve_params"])
    assert row["activation"] == name and set(params) == keys
    x = np.linspace(-3, 3, 61)
    with torch.no_grad():
        expected = module(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    assert rival_curve(name, row["curve_params"], x) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert row[list(RIVAL_COLUMNS[:7])].isna().all() and np.isnan(row["linear_fraction"])


def test_every_rival_gets_a_row_per_site_of_a_tiny_cnn_and_acon_rows_keep_their_columns():
    x = [torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(6))]
    for activation in ("dy_relu_b", "frelu", "pau", "smu", "smu1", "apa"):
        model, sites = build_model("tiny_cnn", activation=activation, in_channels=1, num_classes=10, input_size=28)
        frame = activation_stats(model, x, sites=sites)
        assert list(frame["path"]) == [s.path for s in sites] and set(frame["activation"]) == {activation}
        assert frame["beta_mean"].isna().all()
    model, sites = build_model("tiny_cnn", activation="meta_acon", in_channels=1, num_classes=10, input_size=28)
    frame = activation_stats(model, x, sites=sites)
    assert list(frame.columns)[:len(ACON_COLUMNS)] == list(ACON_COLUMNS)  # the ACON columns first, as before
    assert frame[list(RIVAL_COLUMNS)].isna().all().all() and frame["beta_mean"].notna().all()


def _trial(activation, variant, seed=0):
    model, sites = build_model("tiny_cnn", activation=activation, in_channels=1, num_classes=10, input_size=28)
    frame = activation_stats(model, [torch.randn(4, 1, 28, 28)], sites=sites)
    return frame.assign(variant=variant, seed=seed, run_id=f"run-{variant}", gate="-")


def test_the_curve_plot_draws_pau_and_smu_from_their_parameters_and_names_the_input_dependent_rivals(tmp_path,
                                                                                                     monkeypatch):
    import report.learned as act

    sites = pd.concat([_trial("pau", "pau"), _trial("smu", "smu"), _trial("dy_relu_b", "dy_relu_b")])
    sites = pd.read_csv(_written(sites, tmp_path))  # as the report reads a trial's activations/sites.csv
    kept, save = [], act.save
    monkeypatch.setattr(act, "save", lambda fig, out_dir, stem: kept.append(fig) or save(fig, out_dir, stem))
    paths = act.plot_activations(sites, pd.DataFrame(), tmp_path / "plots")
    assert [p.name for p in paths] == ["act_curves.png", "act_curves.svg"] and all(p.stat().st_size for p in paths)
    fig = kept[0]
    assert "not drawn: dy_relu_b" in fig._suptitle.get_text()
    pau = sites[sites["variant"] == "pau"].iloc[0]
    line = fig.axes[0].lines[0]  # pau's first site: its curve, then ReLU's dashes
    with torch.no_grad():
        module = PAU(init=tuple(json.loads(pau["curve_params"])[k] for k in ("numerator", "denominator")))
        expected = module(torch.as_tensor(line.get_xdata(), dtype=torch.float32)).numpy()
    assert line.get_ydata() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(fig.axes) == 6  # two drawn designs, three sites each


def _written(sites, tmp_path):
    path = tmp_path / "sites.csv"
    sites.to_csv(path, index=False)
    return path

