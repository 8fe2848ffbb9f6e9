"""The complexity counter on tiny models counted by hand, and the paper's params column."""
import math

import pytest
import torch
from torch import nn

import ablation
from ablation.complexity import count, full_shape, overhead
from acon.modules import MetaAconC
from report import overhead_table


def _conv_meta(bn=False, bias=False):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), MetaAconC(4, r=2, bn=bn, bias=bias))


def test_count_matches_hand_count_of_conv_and_meta_acon():
    # count() always runs the reference formula (the fused kernel is invisible to a dispatch mode).
    c = count(_conv_meta(), (3, 4, 4))
    # input 1x3x4x4 -> conv 3->4 (3x3): 64 outputs x 27 MACs; generator fc1 4->2, fc2 2->4 on 1x1: 8 + 8 MACs.
    assert c.params == 4 * 3 * 9 + (2 * 4 + 4 * 2) + 4 + 4
    assert c.macs == 64 * 27 + 8 + 8
    # pool over HW reads 64 (a sum) and scales 4 sums by 1/(HW); sigmoid: 4 betas + 64 gates;
    # p1-p2: 4 subs, +p2x: 64 adds; muls: 4 pool scales + (p1-p2)x, beta*dpx, dpx*sig, p2*x, 64 each.
    assert c.elementwise == {"sigmoid": 68, "mul": 260, "add": 68, "mean": 64, "other": 0}
    assert c.flops == c.macs + 460
    assert c.uncounted == ()


def test_count_classifies_bn_relu_pool_linear():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 10))
    c = count(m, (3, 4, 4))
    assert c.macs == 64 * 27 + 40
    assert c.elementwise["other"] == 64  # ReLU, one op per element
    assert c.elementwise["mul"] == 64 and c.elementwise["add"] == 64  # eval BN: x * scale + shift
    assert c.elementwise["mean"] == 64  # the pool reads every element once
    assert m.training  # counting in eval mode leaves the model's mode as it was


def test_count_on_meta_device_equals_cpu_and_scales_with_batch():
    cpu = count(_conv_meta(bn=True, bias=True), (3, 8, 8))
    with torch.device("meta"):
        meta_model = _conv_meta(bn=True, bias=True)
    assert count(meta_model, (3, 8, 8)) == cpu
    assert count(_conv_meta(), (2, 3, 8, 8)).macs == 2 * count(_conv_meta(), (3, 8, 8)).macs
    assert full_shape((3, 8, 8)) == (1, 3, 8, 8) and full_shape((5, 7)) == (5, 7)


def test_count_agrees_with_the_analytic_generator_counts():
    # ablation.generators.generator_complexity counts the same ops by formula (another engineer's code).
    from ablation.generators import generator_complexity
    from acon.activations import create_activation

    for gen, kw in (("channel", {"r": 4}), ("layer", {}), ("pixel", {})):
        formula = generator_complexity(gen, 16, (1, 16, 8, 8), **kw)
        counted = count(create_activation("meta_acon", 16, generator=gen, **kw), (16, 8, 8))
        assert (counted.params, counted.macs) == (formula["params"], formula["macs"])
        assert {k: counted.elementwise[k] for k in formula["elementwise"]} == formula["elementwise"]
        assert counted.elementwise["other"] == 0


def test_overhead_reports_extra_params_and_flops_against_baseline():
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
    out = overhead(_conv_meta(), base, (3, 4, 4), sites=["x"])
    assert out["params_extra"] == 24 and out["params_baseline"] == 108
    assert out["params_extra_pct"] == pytest.approx(100 * 24 / 108)
    assert out["elementwise_ops_baseline"] == 64 and out["elementwise_ops"] == 460
    assert out["flops_extra_pct"] == pytest.approx(100 * (1744 + 460 - 1728 - 64) / (1728 + 64))
    assert out["sites"] == 1


def test_bad_input_shape_is_a_value_error():
    with pytest.raises(ValueError, match="positive"):
        count(_conv_meta(), (3, 0, 4))


#: "Activate or Not" (CVPR 2021), table of ImageNet results: params (M) with ReLU and with meta-ACON,
#: and the sites the official models change (every ReLU in ShuffleNetV2, the 3x3 ReLU of each ResNet
#: bottleneck; r = 8 for ShuffleNetV2 0.5x, else 16). Figures as printed, one decimal.
PAPER = [
    # model, placement, r, params ReLU, params meta-ACON, sites
    ("shufflenet_v2_x0_5", "all", 8, 1.4, 1.7, 37),
    ("shufflenet_v2_x1_5", "all", 16, 3.5, 3.9, 37),
    ("resnet50", "bottleneck_3x3", 16, 25.5, 25.7, 16),
    ("resnet101", "bottleneck_3x3", 16, 44.4, 44.8, 33),
    ("resnet152", "bottleneck_3x3", 16, 60.0, 60.5, 50),
]
#: The paper's ReLU figure for ResNet-101/152 is 0.15M / 0.19M under the architecture's count
#: (44.55M, 60.19M in torchvision and in He et al.); their increments agree within rounding.
BASELINE_TOLERANCE = {"resnet101": 0.2, "resnet152": 0.2}


@pytest.mark.parametrize("name, placement, r, before, after, sites", PAPER, ids=[row[0] for row in PAPER])
def test_paper_params_column_is_reproduced(name, placement, r, before, after, sites):
    row = overhead_table([name], ["channel"], [r], [placement]).iloc[0]
    # The paper prints one decimal, truncated or rounded (ResNet-50: 25.557M is printed 25.5M), so
    # ours must lie within 0.1M of each printed figure, and the increment within 0.1M of theirs.
    tolerance = BASELINE_TOLERANCE.get(name, 0.1)
    assert abs(row["params_baseline_M"] - before) < tolerance
    assert abs(row["params_M"] - after) < tolerance
    assert abs(row["params_extra"] / 1e6 - (after - before)) < 0.1
    assert row["sites"] == sites and row["replaces"] == f"relu x{sites}"


def test_latency_times_both_models_and_gives_their_ratio():
    from ablation.complexity import latency

    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
    out = latency(_conv_meta(), base, (3, 8, 8), backward=True, min_run_time=0.02)
    assert out["variant_s"] > 0 and out["baseline_s"] > 0
    assert out["ratio"] == pytest.approx(out["variant_s"] / out["baseline_s"])


def _tiny_builder(name, *, activation, generator, r, placement, num_classes, in_channels, small_input, input_size):
    """A one-site model: conv -> activation -> pool -> linear; placement "none" keeps ReLU."""
    from ablation import NoSiteError
    from acon.activations import create_activation

    if placement not in ("all", "none"):
        raise NoSiteError(f"placement {placement!r} selects no activation site")
    options = {"generator": generator, **({"r": r} if r is not None else {})} if activation == "meta_acon" else {}
    act = nn.ReLU() if placement == "none" else create_activation(activation, 8, **options)
    model = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), act, nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, num_classes))
    return model, ([] if placement == "none" else ["site0"])


def test_overhead_table_rows_collapse_r_and_skip_impossible_cells():
    from report import overhead_table

    table = overhead_table(["tiny"], ["channel", "pixel"], [2, 4], ["all", "stage9"], input_size=8, num_classes=3,
                           builder=_tiny_builder)
    assert table[["generator", "r"]].values.tolist() == [["channel", 2], ["channel", 4], ["pixel", "-"]]
    assert len(table.attrs["skipped"]) == 3 and "stage9" in table.attrs["skipped"][0]
    channel_r4 = table.iloc[1]
    # MetaAconC(8, r=4): hidden max(4, 2) = 4; fc1 8*4+4, bn1 2*4, fc2 4*8+8, bn2 2*8, p1 8, p2 8.
    assert channel_r4["params_extra"] == 36 + 8 + 40 + 16 + 16
    assert channel_r4["sites"] == 1 and channel_r4["params_baseline_M"] * 1e6 == pytest.approx(3 * 8 * 9 + 8 * 3 + 3)


def test_the_terminal_overhead_table_fits_a_terminal_and_reads_its_extra_params():
    """The terminal shows the design, params and FLOPs with their overhead (the baseline counts, MACs and
    elementwise ops stay in the full table); ``replaces`` appears only when an activation other than ReLU
    was replaced."""
    from report import format_table, overhead_table
    from report.overhead import terminal_frame

    table = overhead_table(["tiny"], ["channel", "pixel"], [2, 4], ["all"], input_size=8, num_classes=3,
                           builder=_tiny_builder)
    shown = terminal_frame(table)
    assert list(shown.columns) == ["model", "generator", "r", "placement", "sites", "params", "params +",
                                   "FLOPs", "FLOPs +%"]
    assert shown["params +"].tolist() == [f"+{int(n)} ({p:+.2f}%)" for n, p in zip(table["params_extra"],
                                                                                   table["params_extra_pct"])]
    assert shown["params"].tolist() == [str(round(p * 1e6)) for p in table["params_M"]]
    assert max(len(line) for line in format_table(shown, "terminal").splitlines()) <= 100
    big = table.assign(params_extra=[189_776, 2_975_264, 7_552], params_M=[25.747, 0.3494, 0.0009],
                       flops_M=[4135.9, 42.4, 0.5], replaces=["relu x1", "gelu x1", "relu x1"])
    shown = terminal_frame(big)
    assert [v.split()[0] for v in shown["params +"]] == ["+189.8k", "+2.975M", "+7.6k"]
    assert shown["params"].tolist() == ["25.747M", "349.4k", "900"]
    assert shown["FLOPs"].tolist() == ["4.136G", "42.400M", "500.0k"]
    assert shown["replaces"].tolist() == ["relu x1", "gelu x1", "relu x1"]


def test_latency_timing_loads_without_the_cuda_home_warning(tmp_path):
    """``torch.utils.benchmark`` loads ``cpp_extension``, which logs "No CUDA runtime is found" wherever a CUDA
    toolkit is installed without a GPU; ``overhead --latency`` printed that line above its table."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # a toolkit "is installed" here

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120).stderr

    ours = stderr_of("from ablation.complexity import _timer_module; print(_timer_module().Timer)")
    assert "No CUDA runtime" not in ours
    if not torch.cuda.is_available():  # the warning the helper keeps out is real here
        assert "No CUDA runtime" in stderr_of("import torch.utils.benchmark")


@pytest.mark.parametrize("kwargs, message", [
    ({"placements": ["bottlneck_3x3"]}, "unknown placement policy 'bottlneck_3x3' (did you mean 'bottleneck_3x3'?)"),
    ({"activation": "meta_acn"}, "unknown activation 'meta_acn' (did you mean 'meta_acon'?)"),
    ({"rs": [0]}, "reduction ratio r=0 is out of range; allowed: integers >= 1"),
    ({"input_size": 0}, "input size must be an integer >= 1"),
])
def test_overhead_refuses_a_misspelt_name_or_bad_number_instead_of_skipping_the_cell(kwargs, message):
    """Only a placement a model cannot take is a skipped cell; a typo or r=0 used to be one too, and the
    command printed an empty table and exited 0."""
    from report import overhead_table
    from studies.errors import USER_ERRORS

    args = {"models": ["tiny_cnn"], "generators": ["channel"], "rs": [4], "placements": ["all"], **kwargs}
    with pytest.raises(USER_ERRORS) as error:
        overhead_table(args.pop("models"), args.pop("generators"), args.pop("rs"), args.pop("placements"), **args)
    assert message in str(error.value)
    table = overhead_table(["resnet20"], ["channel"], [4], ["bottleneck_3x3", "all"])
    assert table["placement"].tolist() == ["all"] and "selects no activation site" in table.attrs["skipped"][0]


RIVALS = ("dy_relu_a", "dy_relu_b", "dy_relu_c", "frelu", "pau", "smu", "smu1", "apa")


@pytest.mark.parametrize("name", RIVALS)
def test_overhead_of_a_rival_is_its_analytic_cost_summed_over_the_sites(name):
    """resnet20 at 32: every ReLU replaced; the extra params are the rival's analytic params at each site, the
    extra FLOPs its analytic MACs and elementwise ops at each site's input less ReLU's one op per element."""
    from acon.activations import activation_complexity
    from report import overhead_table

    row = overhead_table(["resnet20"], ["channel"], [4], ["all"], activation=name, input_size=32, num_classes=10).iloc[0]
    _, sites = ablation.build_model("resnet20", placement="all", input_size=32, num_classes=10, small_input=True)
    params = flops = 0
    for site in sites:
        shape = (1, site.width, *site.spatial)
        options = {"r": 4} if name.startswith("dy_relu") else {}
        cost = activation_complexity(name, site.width, shape, **options)
        params += cost["params"]
        flops += cost["macs"] + sum(cost["elementwise"].values()) - math.prod(shape)  # less ReLU's max(x, 0)
    assert (row["activation"], row["generator"], row["r"]) == (name, "-", 4 if name.startswith("dy_relu") else "-")
    assert row["params_extra"] == params
    assert round((row["flops_M"] - row["flops_baseline_M"]) * 1e6) == flops
