"""Power, intervals and the Pareto front of the ablation table, checked against independent routes."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from report import inference, pareto, power
from report.stats import ablation_stats, power_alpha


def _guenther_n(effect: float, sd: float, alpha: float, target: float = 0.8) -> float:
    """Closed-form (normal) sample size with Guenther's t correction: ((z_a + z_b) sd / d)^2 + z_a^2 / 2."""
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(target)
    return ((za + zb) * sd / effect) ** 2 + za ** 2 / 2


def test_paired_power_matches_a_monte_carlo_t_test():
    rng = np.random.default_rng(1)
    effect, sd, n, alpha = 0.8, 1.0, 8, 0.05
    diffs = rng.normal(effect, sd, size=(40000, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    simulated = np.mean(np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1))
    assert power.paired_power(effect, sd, n, alpha) == pytest.approx(simulated, abs=0.01)


def test_textbook_sample_size_half_a_standard_deviation_needs_34_pairs():
    # Cohen's table: d = 0.5, two-sided alpha 0.05, power 0.8 -> 34 pairs (33.4 rounded up)
    assert power.seeds_needed(0.5, 1.0, 0.05) == 34
    assert power.paired_power(0.5, 1.0, 34, 0.05) >= 0.8 > power.paired_power(0.5, 1.0, 33, 0.05)


@pytest.mark.parametrize("effect,alpha", [(0.3, 0.05), (0.5, 0.0125), (0.8, 0.05), (1.2, 0.01)])
def test_seeds_needed_agrees_with_the_closed_form(effect, alpha):
    n = power.seeds_needed(effect * 2.0, 2.0, alpha)  # scale-free: only effect / sd matters
    assert abs(n - math.ceil(_guenther_n(effect, 1.0, alpha))) <= 1


def test_detectable_difference_inverts_power_and_tends_to_the_normal_formula():
    mde = power.detectable_difference(1.5, 6, 0.05)
    assert power.paired_power(mde, 1.5, 6, 0.05) == pytest.approx(0.8, abs=1e-9)
    assert power.seeds_needed(mde * 1.001, 1.5, 0.05) == 6
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert power.detectable_difference(1.0, 400, 0.05) == pytest.approx(z / 20, rel=0.01)


def test_power_is_undefined_without_spread_or_pairs():
    assert math.isnan(power.detectable_difference(0.0, 5, 0.05))
    assert math.isnan(power.detectable_difference(1.0, 1, 0.05))
    assert math.isnan(power.seeds_needed(0.0, 1.0, 0.05))
    assert math.isnan(power.seeds_needed(0.001, 1.0, 0.05))  # beyond 1000 seeds: say so, no made-up number


def _bca_by_hand(diffs: np.ndarray, resamples: int = 40000, level: float = 0.95) -> tuple[float, float]:
    """BCa interval of the mean from Efron's formulas (bias z0 from the resamples, acceleration from the jackknife)."""
    rng = np.random.default_rng(7)
    n, theta = len(diffs), diffs.mean()
    boot = diffs[rng.integers(0, n, size=(resamples, n))].mean(1)
    z0 = sps.norm.ppf(np.mean(boot < theta))
    jack = np.array([np.delete(diffs, i).mean() for i in range(n)])
    u = jack.mean() - jack
    a = np.sum(u ** 3) / (6 * np.sum(u ** 2) ** 1.5)
    z = sps.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return tuple(np.quantile(boot, q))


def test_paired_bootstrap_is_bca_of_the_per_seed_differences_and_reproducible():
    base = np.array([70.1, 71.0, 70.4, 69.8, 70.9, 70.2, 70.6, 71.3])
    diffs = np.array([0.2, 0.9, -0.1, 0.4, 1.6, 0.3, 0.5, 0.1])
    lo, hi = inference.bootstrap_interval(base + diffs, base)
    ref_lo, ref_hi = _bca_by_hand(diffs)
    width = ref_hi - ref_lo
    assert lo == pytest.approx(ref_lo, abs=0.08 * width) and hi == pytest.approx(ref_hi, abs=0.08 * width)
    assert lo < diffs.mean() < hi
    assert (lo, hi) == inference.bootstrap_interval(base + diffs, base)  # fixed random state
    paired = sps.bootstrap((base + diffs, base), lambda a, b, axis=-1: np.mean(a - b, axis=axis), paired=True,
                           vectorized=True, method="BCa", n_resamples=inference.BOOTSTRAP_RESAMPLES,
                           rng=np.random.default_rng(inference.BOOTSTRAP_SEED)).confidence_interval
    assert (lo, hi) == pytest.approx((paired.low, paired.high), rel=1e-12)  # the same as scipy's paired=True


def test_too_few_pairs_give_a_note_not_an_interval():
    assert all(math.isnan(v) for v in inference.bootstrap_interval(np.arange(5.0), np.zeros(5)))
    assert all(math.isnan(v) for v in inference.t_interval(np.array([1.0, 3.0])))
    assert inference.too_few(2, inference.MIN_PAIRS_T) == "n=2: too few seeds"
    assert inference.too_few(3, inference.MIN_PAIRS_T) == ""
    # equal differences: nothing to resample, the interval is that value (not a crash, not [0, 100])
    assert inference.bootstrap_interval(np.full(6, 2.5), np.zeros(6)) == (2.5, 2.5)


def test_t_interval_of_the_difference_by_hand():
    d = np.array([0.5, 1.5, 1.0, 2.0])
    half = sps.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert inference.t_interval(d) == pytest.approx((1.25 - half, 1.25 + half))


def test_probability_of_improvement_and_its_wilson_interval():
    diffs = np.array([1.0, 2.0, -1.0, 0.0, 3.0])  # 3 of 5 seeds strictly better; the tie is not
    p, lo, hi = inference.prob_improvement(diffs)
    z, n, k = sps.norm.ppf(0.975), 5, 3
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    assert p == 0.6 and (lo, hi) == pytest.approx((centre - half, centre + half))
    assert inference.prob_improvement(diffs, "minimize")[0] == 0.2
    assert math.isnan(inference.prob_improvement(diffs[:2])[1])


def test_pareto_front_of_four_designs_by_hand():
    acc = pd.Series([70.0, 72.0, 71.0, 69.0, 75.0])
    flops = pd.Series([0.0, 10.0, 5.0, 5.0, math.nan])  # D is beaten by A (more accurate, cheaper); E has no cost
    assert pareto.pareto_front(acc, flops).tolist() == [True, True, True, False, False]
    # minimising an error: the lowest error at each cost wins
    assert pareto.pareto_front(100 - acc, flops, "minimize").tolist() == [True, True, True, False, False]
    assert pareto.pareto_front(pd.Series([1.0, 1.0]), pd.Series([2.0, 2.0])).tolist() == [True, True]


def test_cost_is_read_from_a_metric_or_a_param():
    frame = pd.DataFrame({"param.flops_extra_pct": ["1.5", "2.5"], "params_extra_pct": [3.0, 3.0]})
    assert pareto.cost_value(frame, "flops_extra_pct").tolist() == [1.5, 2.5]
    assert pareto.cost_value(frame, "params_extra_pct").tolist() == [3.0, 3.0]
    assert pareto.cost_value(frame, "flops").isna().all()
    schema = pd.DataFrame({"cost.flops_extra_pct": [4.0], "time/images_per_s": [80.0]})
    assert pareto.group_costs(schema)["flops_extra_pct"] == 4.0 and pareto.group_costs(schema)["images_per_s"] == 80.0


def _study_frame(seeds=6):
    base = [70.0, 71.0, 70.5, 69.5, 70.2, 70.8]
    gains = {"relu": [0] * 6, "meta_acon": [1.0, 1.4, 0.8, 1.2, 0.9, 1.1], "acon_c": [0.3, -0.2, 0.1, 0.4, -0.1, 0.2],
             "silu": [-0.5, -0.4, -0.6, -0.3, -0.5, -0.7]}
    cost = {"relu": (0.0, 0.0, 100.0), "meta_acon": (4.0, 6.0, 80.0), "acon_c": (0.5, 3.0, 90.0), "silu": (0.0, 1.0, 95.0)}
    rows = [{"activation": a, "seed": s, "state": "COMPLETE", "final_val_acc": (base[s] + g[s]) / 100,
             "params_extra_pct": cost[a][0], "flops_extra_pct": cost[a][1], "images_per_s": cost[a][2]}
            for a, g in gains.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def test_table_carries_power_intervals_cost_and_pareto_columns():
    t = ablation_stats(_study_frame(), ["activation"], "final_val_acc", baseline={"activation": "relu"},
                       scale=100.0, effect=0.5).set_index("activation")
    assert power_alpha(t.reset_index()) == pytest.approx(0.05 / 3)  # three rows tested: the first Holm step
    meta = t.loc["meta_acon"]
    d = np.array([1.0, 1.4, 0.8, 1.2, 0.9, 1.1])
    assert meta["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert meta["mde"] == pytest.approx(power.detectable_difference(d.std(ddof=1), 6, 0.05 / 3))
    assert meta["seeds_needed"] == power.seeds_needed(0.5, d.std(ddof=1), 0.05 / 3)
    assert meta["delta_boot_low"] < d.mean() < meta["delta_boot_high"] and meta["p_improve"] == 1.0
    assert meta["time_extra_pct"] == pytest.approx(25.0)  # 100 / 80 images per second
    assert t["pareto"].to_dict() == {"acon_c": True, "meta_acon": True, "relu": True, "silu": False}


def test_two_seeds_say_too_few_instead_of_a_huge_interval():
    t = ablation_stats(_study_frame(seeds=2), ["activation"], "final_val_acc", baseline={"activation": "relu"},
                       scale=100.0).set_index("activation")
    row = t.loc["meta_acon"]
    assert math.isnan(row["ci_low"]) and row["ci_note"] == "n=2: too few seeds"
    assert math.isnan(row["delta_t_low"]) and math.isnan(row["delta_boot_low"])
    assert row["seeds_needed"] >= 3  # the observed difference is the default effect


@pytest.mark.parametrize("effect", [0.0, -0.5, math.inf, math.nan])
def test_effect_must_be_a_positive_difference(effect):
    from report import ReportError

    with pytest.raises(ReportError, match="effect must be a positive number"):
        ablation_stats(_study_frame(), ["activation"], "final_val_acc", baseline={"activation": "relu"}, effect=effect)


def test_pareto_plot_is_written_as_png_and_svg(tmp_path):
    t = ablation_stats(_study_frame(), ["activation"], "final_val_acc", baseline={"activation": "relu"}, scale=100.0)
    paths = pareto.plot_pareto(t, ["activation"], tmp_path)
    assert [p.name for p in paths] == ["pareto_flops.png", "pareto_flops.svg"] and paths[0].stat().st_size > 5000
    svg = paths[1].read_text()
    assert "Pareto front" in svg and all(name in svg for name in ("meta_acon", "acon_c", "silu"))
    assert pareto.plot_pareto(t.assign(pareto=False), ["activation"], tmp_path / "none") == []
