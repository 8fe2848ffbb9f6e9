"""The summary paragraph and the next-run line, on hand-made tables, and their place in build_report."""
import math

import pandas as pd

from report import build as build_module
from report.collect import StudyRuns
from report.plan import next_run_line, seeds_to_run
from report.summary import prepend_to_files, summary_paragraph

NAN = math.nan
GROUPS = ["activation", "generator"]


def _row(activation, mean, *, generator="-", baseline=False, delta=NAN, p_holm=NAN, verdict="noise", n=6, sd=NAN,
         mde=NAN, needed=NAN, effect=NAN, boot=(NAN, NAN), t=(NAN, NAN), improve=(NAN, NAN, NAN), cost=(NAN, NAN, NAN),
         pareto=False):
    return {"activation": activation, "generator": generator, "mean": mean, "is_baseline": baseline,
            "n_pairs": 0 if baseline else n, "delta": delta, "p_t": p_holm, "p_holm": p_holm,
            "verdict": "baseline" if baseline else verdict, "sd_diff": sd, "mde": mde, "seeds_needed": needed,
            "effect": effect, "power_alpha": 0.025, "delta_boot_low": boot[0], "delta_boot_high": boot[1],
            "delta_t_low": t[0], "delta_t_high": t[1], "p_improve": improve[0], "p_improve_low": improve[1],
            "p_improve_high": improve[2], "params_extra_pct": cost[0], "flops_extra_pct": cost[1],
            "time_extra_pct": cost[2], "pareto": pareto}


def _table(meta_verdict="better", meta_p=0.004, n=6, **meta):
    meta = {"boot": (0.8, 1.6), "t": (0.7, 1.7), **meta}
    rows = [_row("relu", 70.0, baseline=True, cost=(0.0, 0.0, 0.0), pareto=True),
            _row("meta_acon", 71.2, generator="channel", delta=1.2, p_holm=meta_p, verdict=meta_verdict, n=n, sd=0.5,
                 mde=0.9, needed=8, effect=1.2, improve=(5 / 6, 0.44, 0.97), cost=(3.1, 6.0, 25.0), pareto=True, **meta),
            _row("silu", 70.3, delta=0.3, p_holm=0.4, sd=0.6, mde=1.1, needed=70, effect=0.3, cost=(0.0, 1.0, 5.0))]
    return pd.DataFrame(rows)


def test_paragraph_names_the_best_design_its_gain_interval_cost_and_corrected_verdict():
    text = summary_paragraph(_table(), group_by=GROUPS, baseline_label="activation=relu", next_run="Next: X.")
    assert text.startswith("Best design: meta_acon/channel, 71.20% accuracy, +1.20 points over activation=relu "
                           "(95% paired bootstrap CI [+0.80, +1.60]; better on 5 of 6 seeds, P(improvement) 0.83 [0.44, 0.97]).")
    assert "Cost: +3.1% params, +6.0% FLOPs, +25.0% time per image; on the accuracy-vs-FLOPs Pareto front." in text
    assert "After Holm correction over 2 comparisons, it beats the baseline (p = 0.004)." in text
    assert text.endswith("Next: X.")


def test_paragraph_with_two_seeds_says_too_few_and_what_could_be_detected():
    table = _table("noise", 0.14, n=2, boot=(NAN, NAN), t=(NAN, NAN))
    text = summary_paragraph(table, group_by=GROUPS, baseline_label="relu")
    assert "(n=2: too few seeds for an interval;" in text and "[" not in text.split("too few")[0]
    assert "not significant and may be seed noise (p = 0.14)" in text
    assert "With 2 seeds only differences of 0.90 points or more are detected with 80% power." in text


def test_paragraph_compares_the_best_acon_design_with_the_parameter_matched_control():
    control = pd.DataFrame([_row("se_control", 70.9, baseline=True),
                            _row("meta_acon", 71.2, generator="channel", delta=0.3, p_holm=0.3, sd=0.4, needed=25, effect=0.3),
                            _row("relu", 70.0, delta=-0.9, p_holm=0.001, verdict="worse", sd=0.3)])
    text = summary_paragraph(_table(), group_by=GROUPS, baseline_label="relu", control=control)
    assert ("Against the parameter-matched control se_control, meta_acon/channel is +0.30 points (p (Holm) = 0.3, "
            "noise): the gain may come from the extra parameters alone.") in text
    control.loc[1, ["verdict", "p_holm", "p_t"]] = ["better", 0.01, 0.01]
    text = summary_paragraph(_table(), group_by=GROUPS, baseline_label="relu", control=control)
    assert "It beats the parameter-matched control se_control too: meta_acon/channel +0.30 points" in text
    # the control's seeds plan: the undecided ACON-vs-control comparison needs the most seeds
    control.loc[1, ["verdict"]] = ["noise"]
    n, row, against = seeds_to_run(_table(), control=control)
    assert (n, row["activation"], against) == (25, "meta_acon", "se_control")


def test_without_a_baseline_the_paragraph_names_the_best_mean_and_plans_nothing():
    table = _table().iloc[1:]
    text = summary_paragraph(table, group_by=GROUPS, baseline_label="activation=relu")
    assert text == "Best design: meta_acon/channel, 71.20% accuracy; no baseline row (activation=relu) to compare it with."
    assert next_run_line(table, study="s", group_by=GROUPS, seeds=6) == ""


def test_next_run_is_a_command_for_the_seeds_the_named_effect_needs():
    table = _table()
    table["effect"] = 0.5
    table.loc[1:, "seeds_needed"] = [12, 40]  # silu needs the most for a 0.5-point difference
    line = next_run_line(table, study="design_space", group_by=GROUPS, seeds=5, effect=0.5, preset="paper")
    assert line.startswith("Next: `python run_study.py run design_space --seeds 40 --preset paper`: 40 seeds detect a "
                           "difference of 0.50 points (silu vs the baseline) with 80% power at alpha 0.025")
    table.loc[2, "seeds_needed"] = NAN  # silu out of reach: plan for the others and say which is beyond
    line = next_run_line(table, study="design_space", group_by=GROUPS, seeds=5, effect=0.5)
    assert "--seeds 12`" in line and line.endswith("Beyond 1000 seeds: silu vs the baseline.")


def test_next_run_by_default_plans_for_the_best_designs_observed_difference_while_undecided():
    assert "no rerun needed" in next_run_line(_table(), study="s", group_by=GROUPS, seeds=6)
    undecided = _table("noise", 0.08)
    assert "`python run_study.py run s --seeds 8`" in next_run_line(undecided, study="s", group_by=GROUPS, seeds=6)
    assert "already detect" in next_run_line(undecided, study="s", group_by=GROUPS, seeds=8)
    undecided.loc[1, "seeds_needed"] = NAN  # beyond 1000 seeds
    assert "needs more than 1000 seeds" in next_run_line(undecided, study="s", group_by=GROUPS, seeds=6)
    one_seed = _table(n=1)
    one_seed.loc[1:, "n_pairs"] = 1
    assert "--seeds 3` to estimate the seed-to-seed noise" in next_run_line(one_seed, study="s", group_by=GROUPS, seeds=1)


def test_the_suggested_command_parses_and_only_adds_cells_for_the_new_seeds():
    import run_study
    from studies.catalog import load_study

    line = next_run_line(_table("noise", 0.08), study="design_space", group_by=GROUPS, seeds=3)
    command = line.split("`")[1].split()
    args = run_study.build_parser().parse_args(command[2:])
    assert (args.study, args.seeds) == ("design_space", 8)
    spec = load_study("design_space")
    old, new = spec.cells(spec.settings("quick")), spec.cells(spec.settings("quick", {"seeds": 8}))
    assert all(c in new for c in old) and len(new) - len(old) == 5 * len(spec.designs)


def test_summary_goes_on_top_of_markdown_and_html(tmp_path):
    md, html, csv = tmp_path / "t.md", tmp_path / "t.html", tmp_path / "t.csv"
    for p in (md, html, csv):
        p.write_text("TABLE", encoding="utf-8")
    prepend_to_files([md, html, csv], "Best <design>: run `x`.")
    assert md.read_text() == "Best <design>: run `x`.\n\nTABLE"
    assert html.read_text() == "<p>Best &lt;design&gt;: run x.</p>\nTABLE" and csv.read_text() == "TABLE"


def test_build_report_puts_the_summary_first_and_the_next_run_under_the_table(monkeypatch, tmp_path):
    rows = []
    for activation, gains, cost in (("relu", [0, 0, 0, 0], 0.0), ("meta_acon", [1.0, 1.3, 0.8, 1.1], 6.0),
                                    ("se_control", [0.7, 0.9, 0.9, 0.6], 5.8)):
        for seed, gain in enumerate(gains):
            rows.append({"run_id": f"{activation}{seed}", "trial": len(rows), "state": "COMPLETE", "activation": activation,
                         "seed": seed, "final_val_acc": 0.7 + 0.002 * seed + gain / 100,
                         "flops_extra_pct": cost, "duplicate": ""})
    runs = StudyRuns("toy", "0", "parent", ["activation"], "val_acc", "maximize", pd.DataFrame(rows), "sqlite://")
    monkeypatch.setattr(build_module, "collect", lambda *a, **k: runs)
    text = build_module.build_report("toy", formats=("terminal", "markdown"), out_dir=tmp_path, log_to_mlflow=False)
    flat = " ".join(text.split())  # the terminal may wrap long lines
    paragraph = flat[flat.index("Best design: meta_acon, "):flat.index("Next: `python run_study.py run toy --seeds ")]
    assert "se_control" in paragraph and "Cost: +6.0% FLOPs" in paragraph
    assert flat.count("Next: `python run_study.py run toy --seeds ") == 2  # ends the paragraph, and under the table
    assert flat.rindex("Next:") > flat.index("toy") and flat.endswith("missing seeds' cells.")
    markdown = (tmp_path / "toy_table.md").read_text()
    assert "Best design: meta_acon, " in markdown and "Δ CI (bootstrap)" in markdown and "Pareto" in markdown
    assert "n=4: too few seeds" in markdown


def test_cli_refuses_a_non_positive_effect_in_one_line(capsys, tmp_path):
    import run_study

    code = run_study.main(["report", "design_space", "--effect", "-0.5", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: effect must be a positive number (a difference in the table's units), got -0.5"]
    assert not (tmp_path / "m.db").exists()  # refused before any store is opened


def test_rerun_flags_repeat_the_settings_that_differ_from_the_preset_so_the_rerun_resumes():
    from report.plan import rerun_flags

    # design_space's quick preset trains 5 epochs without augmentation; this study ran 2 epochs with it
    recorded = {"epochs": "2", "augment": "True", "lr": "0.1", "seeds": "2", "channels_last": "True"}
    assert rerun_flags("design_space", "quick", recorded) == " --epochs 2 --augment"
    assert rerun_flags("design_space", "quick", {"epochs": "5"}) == ""
    assert rerun_flags("no_such_study_file", "quick", recorded) == ""  # a user's file is not found by name
