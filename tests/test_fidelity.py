"""Does the short schedule rank true: ``report --fidelity`` and ``report A --against B`` (report.fidelity,
report.against), checked by hand on synthetic studies written through the schema and run on two really trained ones."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy.stats import kendalltau

from _tracked import Trial, write_study
from report import build_report, collect
from report.against import schedule_names
from report.fidelity import fidelity
from report.ranking import DRAWS, tau_b

# Per design, per epoch 1..4, per seed 0..2. Final order: acon_c > meta_acon > silu > relu. Epoch 1 has it reversed;
# from epoch 2 relu sits above silu until the last epoch (a late crossing). Seeds move every design alike
# (+0.01, 0, -0.01), so paired draws keep every order but one: acon_c at epoch 2, whose seed 2 falls behind.
COMMON = (0.01, 0.0, -0.01)
BASE = {"acon_c": (0.25, None, 0.70, 0.80), "meta_acon": (0.30, 0.58, 0.69, 0.78),
        "silu": (0.35, 0.50, 0.64, 0.74), "relu": (0.40, 0.55, 0.66, 0.70)}
ACON_C_EPOCH_2 = (0.63, 0.63, 0.535)


def curve(design: str, seed: int) -> list[float]:
    return [ACON_C_EPOCH_2[seed] if base is None else round(base + COMMON[seed], 6) for base in BASE[design]]


VALUES = {d: [curve(d, s) for s in range(3)] for d in BASE}  # design -> seed -> epoch
SEARCHED = {"acon_c": 0.70, "meta_acon": 0.72, "silu": 0.60, "relu": 0.62}  # one seed each, ranked otherwise


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every study of the module (creating one costs seconds): a synthetic grid, a
    synthetic search of the same designs, a study without per-epoch history, and two trained ones."""
    root = tmp_path_factory.mktemp("fidelity")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cells = [(d, s) for d in BASE for s in range(3)]
    grid = [Trial(i, {"activation": d, "seed": s}, final={"val_acc": VALUES[d][s][-1]},
                  curves={"val_acc": VALUES[d][s]}) for i, (d, s) in enumerate(cells)]
    write_study(uri, "syn", grid, axes=["activation"])
    search = [Trial(i, {"activation": d, "seed": 0}, final={"val_acc": v}, curves={"val_acc": [v / 2, v]})
              for i, (d, v) in enumerate(SEARCHED.items())]
    write_study(uri, "syn_search", search, axes=["activation"], sampler="tpe")
    flat = [Trial(i, {"activation": d, "seed": 0}, final={"val_acc": 0.5}) for i, d in enumerate(("relu", "silu"))]
    write_study(uri, "flat", flat, axes=["activation"])
    return uri, root


def independent_bootstrap(scores: dict[str, list[list[float]]], final: dict[str, list[float]], n: int):
    """The same draws (``default_rng(0).integers(0, n, (DRAWS, n))``, the documented convention), each evaluated with
    plain means and scipy's kendalltau once per distinct draw: the 2.5/97.5 percentiles of tau per epoch and the
    share of draws in which the final best leads."""
    idx = np.random.default_rng(0).integers(0, n, size=(DRAWS, n))
    designs = list(final)
    best = max(designs, key=lambda d: np.mean(final[d]))
    seen = {}
    for row in map(tuple, idx):
        if row not in seen:
            last = [np.mean([final[d][i] for i in row]) for d in designs]
            taus, leads = [], []
            for epoch in range(len(scores[best][0])):
                means = {d: np.mean([scores[d][i][epoch] for i in row]) for d in designs}
                taus.append(kendalltau([means[d] for d in designs], last).statistic)
                leads.append(all(means[best] > means[d] for d in designs if d != best))
            seen[row] = (taus, leads)
    taus = np.array([seen[tuple(r)][0] for r in idx])
    leads = np.array([seen[tuple(r)][1] for r in idx])
    return np.percentile(taus, 2.5, axis=0), np.percentile(taus, 97.5, axis=0), leads.mean(axis=0)


def test_tau_by_epoch_its_ci_the_lead_epoch_and_late_crossings_match_a_hand_computation(store):
    uri, _ = store
    fid = fidelity(collect("syn", tracking_uri=uri), "val/acc")
    # 6 pairs of 4 designs. Epoch 1: all reversed, tau -1. Epochs 2 and 3: relu > silu, the one pair unlike the end:
    # (5 - 1) / 6. Epoch 4 is the final ranking.
    assert fid.table["tau"].tolist() == pytest.approx([-1.0, 2 / 3, 2 / 3, 1.0])
    low, high, lead = independent_bootstrap(VALUES, {d: [v[-1] for v in VALUES[d]] for d in BASE}, 3)
    assert fid.how.unit == "seeds" and fid.how.seeds == [0, 1, 2]
    assert fid.table["tau_low"].tolist() == pytest.approx(low.tolist())
    assert fid.table["tau_high"].tolist() == pytest.approx(high.tolist())
    # epoch 2: acon_c leads a draw unless it holds seed 2 twice or more (7 of the 27 equally likely draws):
    # ~20/27 of draws, then 100% from epoch 3: it leads in >= 95% of draws at every epoch from 3 on
    assert fid.table["lead"].tolist() == pytest.approx(lead.tolist())
    assert fid.table["lead"].tolist()[0] == 0 and 0.65 < fid.table["lead"].iloc[1] < 0.85
    assert fid.table["lead"].tolist()[2:] == [1.0, 1.0]
    # epoch 2's interval: up to the sample's 2/3; down to 0 where seed 2 alone (1 in 27 draws, over 2.5%) puts acon_c
    # behind meta_acon and relu (3 of 6 pairs unlike the end)
    assert fid.table["tau_low"].iloc[1] == 0 and fid.table["tau_high"].iloc[1] == pytest.approx(2 / 3)
    assert fid.best == "acon_c" and fid.lead_epoch == 3
    assert fid.crossings == [("silu", "relu", 3)]  # last ordered unlike the end at epoch 3, after half of 4
    assert fid.table["leader"].tolist() == ["relu", "acon_c", "acon_c", "acon_c"]
    text = fid.summary()
    assert "acon_c, best at the end, leads in at least 95% of draws at every epoch from 3 on" in text
    assert "Late crossings (ordered unlike the end after epoch 2 of 4): silu and relu (until epoch 3)" in text


def test_vectorised_tau_b_equals_scipys_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 3, size=(200, 6)).astype(float), rng.integers(0, 4, size=(200, 6)).astype(float)
    ours = tau_b(x, y)
    theirs = np.array([kendalltau(a, b).statistic for a, b in zip(x, y)])
    assert np.allclose(ours, theirs, equal_nan=True) and np.isnan(ours).any()  # a row with every x tied has no tau


def test_a_search_with_one_seed_per_design_resamples_designs_and_says_so(store):
    uri, _ = store
    fid = fidelity(collect("syn_search", tracking_uri=uri), "val/acc")
    assert fid.how.unit == "designs" and fid.lead_epoch == 1  # every curve is half its final value at epoch 1
    assert fid.table["tau"].tolist() == pytest.approx([1.0, 1.0]) and math.isnan(fid.table["lead"].iloc[0])
    assert "designs are resampled" in fid.summary() and "(no seeds to resample)" in fid.summary()


def test_against_a_search_of_the_same_designs_matches_a_hand_computation(store):
    uri, _ = store
    text = build_report("syn", tracking_uri=uri, against="syn_search", log_to_mlflow=False)
    # grid: acon_c > meta_acon > silu > relu; search: meta_acon > acon_c > relu > silu: 2 of 6 pairs unlike: tau 1/3
    grid_means = {d: np.mean([v[-1] for v in VALUES[d]]) for d in BASE}
    designs = sorted(BASE)
    idx = np.random.default_rng(0).integers(0, 4, size=(DRAWS, 4))  # one seed shared: designs are resampled
    tau = {r: kendalltau([grid_means[designs[i]] for i in r], [SEARCHED[designs[i]] for i in r]).statistic
           for r in set(map(tuple, idx))}
    low, high = np.nanpercentile([tau[tuple(r)] for r in idx], [2.5, 97.5])
    verdict = f"the syn ranking is not shown to agree with the syn_search ranking: tau 0.33 [{low:.2f}, {high:.2f}]"
    assert verdict in text
    assert "designs are resampled" in text and "Left out" not in text


def test_fidelity_and_against_are_on_the_html_page_and_the_parent_run(store):
    uri, root = store
    out = root / "out"
    build_report("syn", tracking_uri=uri, fidelity=True, against="syn_search", formats=("terminal", "html"),
                 out_dir=out)
    client = MlflowClient(tracking_uri=uri)
    parent = collect("syn", tracking_uri=uri).parent_run_id
    run = client.get_run(parent)
    taus = [(m.step, round(m.value, 4)) for m in client.get_metric_history(parent, "fidelity/tau")]
    assert sorted(taus) == [(1, -1.0), (2, 0.6667), (3, 0.6667), (4, 1.0)]
    assert run.data.metrics["fidelity/lead_epoch"] == 3
    assert run.data.metrics["against/syn_search/tau"] == pytest.approx(1 / 3)
    assert "from 3 on" in run.data.tags["acon.fidelity"]
    verdict = run.data.tags["acon.against.syn_search"]
    assert verdict.startswith("the syn ranking is not shown to agree with the syn_search ranking: tau 0.33")
    note = run.data.tags["mlflow.note.content"]  # one line each in the description, the tables as artifacts
    assert run.data.tags["acon.fidelity"] in note and verdict in note and "| epoch" not in note
    logged = {a.path for folder in ("report/tables", "report/plots") for a in client.list_artifacts(parent, folder)}
    assert {"report/tables/syn_fidelity.csv", "report/tables/syn_against_syn_search.csv",
            "report/plots/fidelity_ranks.png"} <= logged
    page = (out / "syn_table.html").read_text(encoding="utf-8")
    assert "Does the short schedule rank true" in page and "Against syn_search" in page
    assert 'alt="fidelity_ranks"' in page


def test_schedule_names_say_what_differs_epochs_first():
    assert schedule_names({"epochs": "2", "lr": "0.1"}, {"epochs": "5", "lr": "0.1"}) == ("2-epoch", "5-epoch")
    assert schedule_names({"epochs": "5", "dataset": "digits"}, {"epochs": "30", "dataset": "mnist5k"}) == \
        ("5-epoch, dataset=digits", "30-epoch, dataset=mnist5k")
    assert schedule_names({"model": "a"}, {"model": "a"}) == ("", "")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    import run_study

    code = run_study.main(["report", *args, "--no-log"])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_unknown_against_study_is_one_line_naming_the_studies_there(store, capsys):
    uri, _ = store
    code, _, err = run_cli(capsys, "syn", "--tracking-uri", uri, "--against", "nope")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --against nope: no MLflow experiment 'nope'")
    assert "syn_search" in lines[0] and "flat" in lines[0]


def test_fidelity_of_a_study_without_per_epoch_history_says_so_in_one_line(store, capsys):
    uri, _ = store
    code, _, err = run_cli(capsys, "flat", "--tracking-uri", uri, "--fidelity")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "has no per-epoch history of val/acc" in lines[0]


TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 64, "seeds": 2, "batch_size": 64, "act_images": 0}
DESIGNS = ({"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"})


@pytest.fixture(scope="module")
def trained(store):
    """The same two designs, two seeds, really trained for 2 and for 5 epochs on 64 images (seconds on a CPU)."""
    from studies.run.options import RunOptions
    from studies.run.launch import run_study
    from studies.spec import Study

    uri, root = store
    for epochs in (2, 5):
        study = Study(name=f"short{epochs}", doc="fidelity test", designs=DESIGNS, fixed={**TINY, "epochs": epochs})
        # one thread: tiny tensors gain nothing from two, and on a busy 2-core machine contention made it 10x slower
        run_study(study, RunOptions(storage=f"{root}/optuna.journal", tracking_uri=uri, progress=False, device="cpu",
                                    threads=1))
    return uri


@pytest.mark.slow
def test_a_2_epoch_study_against_a_5_epoch_one_of_the_same_designs(trained, capsys):
    """Structure only: another CPU trains to other numbers."""
    code, out, _ = run_cli(capsys, "short2", "--tracking-uri", trained, "--against", "short5", "--fidelity")
    assert code == 0
    runs = [collect(s, tracking_uri=trained) for s in ("short2", "short5")]
    from report.against import against

    result = against(*runs, ("final/val_acc", "final/val_acc"), ({"activation": "relu"},) * 2, scale=100.0)
    assert result.names == ("2-epoch", "5-epoch") and result.only == ([], [])
    assert set(result.table["variant"]) == {"relu/all", "acon_c/all"}
    assert result.how.unit == "seeds" and result.how.seeds == [0, 1]
    verdict = result.verdict()
    assert verdict.startswith("the 2-epoch ranking (short2) ") and "the 5-epoch ranking (short5)" in verdict
    if math.isnan(result.tau):  # every design tied in one study: possible with 6 validation images
        assert "cannot be compared" in verdict
    else:  # with 2 seeds half of the draws are the sample itself: the interval holds the estimate
        assert -1 <= result.low <= result.tau <= result.high <= 1
    assert verdict in out and "Does the short schedule rank true" in out and "epoch" in out
    assert result.table.loc[result.table["variant"] == "relu/all", "delta_A"].isna().all()  # the baseline itself
