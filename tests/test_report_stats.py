"""Ablation statistics and table formats on small frames with numbers checked by hand."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from acon.registry import UnknownNameError
from report import ReportError, format_table
from report.stats import ablation_stats, parse_baseline
from report.tables import display_frame

BASE = [0.700, 0.710, 0.705, 0.695, 0.702, 0.708]
GAIN = [0.004, 0.006, 0.005, 0.003, 0.007, 0.005]  # a real gain: every seed improves
NOISE = [0.004, -0.006, 0.001, -0.003, 0.005, -0.002]


def _frame(n_seeds=6):
    rows = []
    for name, deltas in (("relu", [0] * 6), ("meta_acon", GAIN), ("acon_c", NOISE)):
        for seed in range(n_seeds):
            rows.append({"activation": name, "seed": seed, "state": "COMPLETE", "final_val_acc": BASE[seed] + deltas[seed]})
    rows.append({"activation": "meta_acon", "seed": 9, "state": "PRUNED", "final_val_acc": np.nan})
    rows.append({"activation": "acon_c", "seed": 9, "state": "FAIL", "final_val_acc": np.nan})
    return pd.DataFrame(rows)


def _table(n_seeds=6):
    return ablation_stats(_frame(n_seeds), ["activation"], "final_val_acc", baseline={"activation": "relu"},
                          scale=100.0).set_index("activation")


def test_mean_std_and_t_interval_match_hand_computation():
    row = _table().loc["meta_acon"]
    values = 100 * (np.array(BASE) + np.array(GAIN))
    half = sps.t.ppf(0.975, 5) * values.std(ddof=1) / math.sqrt(6)
    assert row["n"] == 6 and row["pruned"] == 1 and row["failed"] == 0
    assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std(ddof=1))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((values.mean() - half, values.mean() + half))


def test_paired_difference_tells_a_gain_from_noise():
    table = _table()
    gain, noise = table.loc["meta_acon"], table.loc["acon_c"]
    assert gain["delta"] == pytest.approx(100 * np.mean(GAIN))
    assert gain["p_t"] == pytest.approx(sps.ttest_rel(100 * (np.add(BASE, GAIN)), 100 * np.array(BASE)).pvalue)
    assert gain["p_t"] < 0.001 and gain["verdict"] == "better"
    assert gain["p_wilcoxon"] == pytest.approx(2 / 64)  # all 6 pairs positive: the exact minimum
    assert noise["p_t"] > 0.5 and noise["verdict"] == "noise" and noise["failed"] == 1
    assert table.loc["relu", "verdict"] == "baseline" and math.isnan(table.loc["relu", "p_t"])
    assert table["best"].sum() == 1 and table.loc["meta_acon", "best"]


def test_wilcoxon_needs_six_pairs():
    table = _table(n_seeds=5)
    assert math.isnan(table.loc["meta_acon", "p_wilcoxon"]) and table.loc["meta_acon", "n_pairs"] == 5


def test_pairs_are_matched_by_seed_not_by_order():
    frame = _frame().sample(frac=1.0, random_state=0)  # shuffled rows, same pairs
    table = ablation_stats(frame, ["activation"], "final_val_acc", baseline={"activation": "relu"}, scale=100.0)
    assert table.set_index("activation").loc["meta_acon", "delta"] == pytest.approx(100 * np.mean(GAIN))


def test_baseline_spec_parsing_and_errors():
    assert parse_baseline("activation=relu, r=16", ["activation", "r"]) == {"activation": "relu", "r": "16"}
    with pytest.raises(ReportError, match="valid choices: activation, r"):
        parse_baseline("placement=all", ["r", "activation"])
    with pytest.raises(ReportError, match="axis=value"):
        parse_baseline("relu", ["activation"])


def test_every_format_renders_the_numbers():
    shown = display_frame(_table().reset_index(), ["activation"], accuracy=True, baseline_label="relu")
    row = shown.set_index("activation").loc["meta_acon"]
    assert row["Δ vs relu"] == "+0.50" and row["verdict"] == "better" and row["best"] == "*"
    assert row["pruned/failed"] == "1/0" and row["p (t)"] == "<0.001"
    for fmt, marker in [("terminal", "meta_acon"), ("markdown", "| meta_acon"), ("csv", "meta_acon,"),
                        ("latex", r"meta\_acon"), ("html", "<td>meta_acon</td>")]:
        text = format_table(shown, fmt)
        assert marker in text and "+0.50" in text
    assert r"$\pm$" in format_table(shown, "latex")
    with pytest.raises(UnknownNameError, match="valid choices: csv, html, latex, markdown, terminal"):
        format_table(shown, "xlsx")


def test_equal_differences_fall_back_to_the_sign_test():
    # Coarse accuracies: both seeds lose exactly one image. t is undefined; 2 of 2 signs give p = 0.5.
    frame = pd.DataFrame({"activation": ["relu", "relu", "x", "x"], "seed": [0, 1, 0, 1], "state": ["COMPLETE"] * 4,
                          "final_val_acc": [0.50, 0.60, 0.49, 0.59]})
    row = ablation_stats(frame, ["activation"], "final_val_acc", baseline={"activation": "relu"}).set_index("activation")
    assert row.loc["x", "p_t"] == pytest.approx(0.5) and row.loc["x", "verdict"] == "noise"


def test_holm_adjustment_matches_hand_computation_and_skips_untested_rows():
    from report.stats import holm

    p = pd.Series([0.01, np.nan, 0.04, 0.03, 0.005], index=list("abcde"))
    # sorted tested p: e .005, a .01, d .03, c .04 (m = 4) -> 4*.005, 3*.01, 2*.03, 1*.04, then running max
    expected = {"e": 0.02, "a": 0.03, "d": 0.06, "c": 0.06}
    adjusted = holm(p)
    assert math.isnan(adjusted["b"])
    for key, value in expected.items():
        assert adjusted[key] == pytest.approx(value)


def test_verdict_uses_holm_so_a_lone_p_below_005_among_many_tests_is_noise():
    rows = []
    gains = {"relu": [0, 0, 0], "a": [0.010, 0.013, 0.007], "b": [0.0, 0.001, -0.001], "c": [0.002, -0.001, 0.0]}
    for name, deltas in gains.items():
        for seed, d in enumerate(deltas):
            rows.append({"activation": name, "seed": seed, "state": "COMPLETE", "final_val_acc": BASE[seed] + d})
    table = ablation_stats(pd.DataFrame(rows), ["activation"], "final_val_acc", baseline={"activation": "relu"},
                           scale=100.0).set_index("activation")
    raw, adjusted = table.loc["a", "p_t"], table.loc["a", "p_holm"]
    # paired diffs 1.0, 1.3, 0.7 points: t = 5.77 with 2 df, p = 0.029; three rows tested -> Holm 0.086
    assert raw == pytest.approx(sps.ttest_1samp([1.0, 1.3, 0.7], 0).pvalue, rel=1e-6) and raw < 0.05
    assert adjusted == pytest.approx(3 * raw) and adjusted >= 0.05
    assert table.loc["a", "verdict"] == "noise"
    assert (table["p_holm"].dropna() >= table["p_t"].dropna()).all()
