"""Racing designs across seeds: its errors, its answer and its savings, simulated and replayed on a finished grid.

    python benchmarks/race_replay.py [--races 1000]                        # simulations with known truth
    python benchmarks/race_replay.py --replay [--grid-dir DIR] [--replays 1000]
    python benchmarks/race_replay.py --study NAME --tracking-uri URI [--replays 1000]

Simulation: designs with known true means and noise (a seed effect shared by all designs, as when one seed
fixes the data order, plus each design's own noise), raced many times as ``run --race`` races them (futility
0.2) and without futility; per scenario and test: how often the truly best design was dropped (with ties, a
given best one), the trials used against the full grid, and how often the answer is the truth: the true best
named best, and every claimed difference to the baseline true (no false claim), beside the full grid's answer
(the report's own analysis of every seed). Then the global null: every design tied, how often a given design,
any design, and any difference to the baseline was claimed.

Replay: the trials of a finished full grid (``--replay``: the quick ``design_space`` with ``--seeds 8``, run
into ``--grid-dir`` first if it is not there, about 10 minutes on 2 cores; ``--study``: any finished grid),
raced again with the order of its seeds shuffled each time; prints the share of the grid's trials the race
used, and how often its answer equals the grid's: the same best design and the same designs better and worse
than the baseline (the report's paired t-test, Holm over the designs, 0.05, on every seed).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from report.stats import ALPHA, holm
from studies.race.plan import FUTILITY, RacePlan
from studies.race.procedure import RaceState, race
from studies.race.stats import p_paired

#: name -> (baseline, {design: (true mean, own noise)}, shared seed noise); accuracy points.
SCENARIOS = {
    "quick design_space (its means and spreads)": ("relu", {
        "relu": (90.9, 1.6), "silu": (92.1, 0.9), "acon_c": (94.7, 0.9), "layer": (79.6, 11.0),
        "channel": (94.1, 0.9), "pixel": (90.8, 1.1)}, 0.5),
    "all tied (every design is a best one)": ("d0", {f"d{i}": (90.0, 1.0) for i in range(6)}, 0.5),
    "one clear winner, five 2 points behind": ("d1", {"d0": (92.0, 1.0), **{f"d{i}": (90.0, 1.0) for i in range(1, 6)}},
                                               0.5),
    "ten designs, 0 to 3 points behind": ("d9", {f"d{i}": (90.0 - i / 3, 1.0) for i in range(10)}, 0.5),
    "two close at the top, four far behind": ("d5", {"d0": (95.0, 1.0), "d1": (94.5, 1.0),
                                                     **{f"d{i}": (85.0, 1.0) for i in range(2, 6)}}, 0.5),
}

Answer = tuple  # (best, frozenset of designs better than the baseline, frozenset worse)


def grid_answer(values: dict[str, dict[int, float]], baseline: str, seeds: Sequence[int],
                direction: str = "maximize") -> Answer:
    """The report's own analysis of every seed: the best mean (the baseline left out, as the report's summary
    does), and each design's two-sided paired t-test against the baseline, Holm over the designs at 0.05."""
    sign = 1.0 if direction == "maximize" else -1.0
    others = [d for d in values if d != baseline]
    best = max(others, key=lambda d: sign * np.mean([values[d][s] for s in seeds]))
    diffs = {d: np.array([sign * (values[d][s] - values[baseline][s]) for s in seeds]) for d in others}
    adjusted = holm(pd.Series({d: p_paired(x) for d, x in diffs.items()}))
    shown = [d for d in others if adjusted[d] < ALPHA]
    return best, frozenset(d for d in shown if diffs[d].mean() > 0), frozenset(d for d in shown if diffs[d].mean() < 0)


def race_answer(state: RaceState) -> Answer:
    """(best, better, worse) of the race's own answer (``RaceState.answer``)."""
    answer = state.answer()
    return (answer.best, frozenset(v.design for v in answer.better), frozenset(v.design for v in answer.worse))


def _table(designs: dict[str, tuple[float, float]], shared: float, seeds: int, rng: np.random.Generator,
           images: int | None = None) -> dict[str, dict[int, float]]:
    """One grid of results: a shared seed effect plus each design's own noise; ``images``: accuracies counted on
    a validation set of that many images (multiples of 100 / images points, so ties happen)."""
    effect = rng.normal(0, shared, seeds)
    table = np.array([[m + effect[s] + rng.normal(0, sd) for s in range(seeds)] for m, sd in designs.values()])
    if images:
        table = np.round(table * images / 100) * 100 / images
    return {d: dict(enumerate(row.tolist())) for d, row in zip(designs, table)}


def simulate(baseline: str, designs: dict[str, tuple[float, float]], shared: float, plan: RacePlan, races: int,
             rng: np.random.Generator, images: int | None = None) -> dict[str, float]:
    """Shares of ``races``: the truly best design dropped (with ties, a given one); any design dropped; any
    difference to the baseline claimed; the race's answer true (its best the true best, every claim true), and the
    full grid's; plus the mean share of the grid's trials the race used."""
    names = list(designs)
    top = max(m for d, (m, _) in designs.items() if d != baseline)
    best = next(d for d, (m, _) in designs.items() if m == top and d != baseline)  # tied best: a given one
    tops = {d for d, (m, _) in designs.items() if m == top and d != baseline}
    true = {d: np.sign(designs[d][0] - designs[baseline][0]) for d in names if d != baseline}
    count = dict.fromkeys(("dropped", "any", "claims", "race_true", "grid_true", "used"), 0.0)

    def is_true(answer: Answer) -> bool:
        return answer[0] in tops and all(true[d] > 0 for d in answer[1]) and all(true[d] < 0 for d in answer[2])

    for _ in range(races):
        values = _table(designs, shared, plan.max_seeds, rng, images)
        state = race(names, {d: set(range(plan.max_seeds)) for d in names}, values, plan, baseline)
        count["dropped"] += best in state.dropped
        count["any"] += bool(state.dropped)
        count["claims"] += bool(state.verdicts)
        count["race_true"] += is_true(race_answer(state))
        count["grid_true"] += is_true(grid_answer(values, baseline, range(plan.max_seeds), plan.direction))
        count["used"] += len(state.wanted()) / (len(names) * plan.max_seeds)
    return {k: v / races for k, v in count.items()}


def replay(values: dict[str, dict[int, float]], baseline: str, direction: str, replays: int, test: str,
           futility: float, rng: np.random.Generator) -> dict[str, float]:
    """Race a finished grid again with its seeds in shuffled orders: the share of its trials used, how often the
    race's answer is the grid's (the same best; the same best and the same designs better and worse than the
    baseline; the grid's best among the race's best and the designs tied with it, and the same claims)."""
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    designs = list(values)
    plan = RacePlan(max_seeds=len(seeds), direction=direction, test=test, futility=futility)
    truth = grid_answer({d: {s: values[d][s] for s in seeds} for d in designs}, baseline, seeds, direction)
    out = dict.fromkeys(("used", "best", "same", "among_tied"), 0.0)
    for _ in range(replays):
        order = rng.permutation(seeds)
        shuffled = {d: {i: values[d][int(s)] for i, s in enumerate(order)} for d in designs}
        state = race(designs, {d: set(range(len(seeds))) for d in designs}, shuffled, plan, baseline)
        answer = race_answer(state)
        top = {answer[0], *(t.design for t in state.answer().tied)}
        out["used"] += len(state.wanted()) / (len(designs) * len(seeds))
        out["best"] += answer[0] == truth[0]
        out["same"] += answer == truth
        out["among_tied"] += truth[0] in top and answer[1:] == truth[1:]
    return {"truth": truth, **{k: v / replays for k, v in out.items()}}


def grid_values(study: str, tracking_uri: str) -> tuple[dict[str, dict[int, float]], str, str]:
    """A finished grid's objective per design and seed (accuracies in points), its baseline and direction."""
    from report.collect import collect
    from studies.tracking import schema

    runs = collect(study, tracking_uri=tracking_uri)
    column = schema.metric_key(runs.metric)
    done = runs.kept[(runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()]
    scale = 100.0 if done[column].between(0, 1).all() else 1.0
    values: dict[str, dict[int, float]] = {}
    for variant, seed, value in zip(done["variant"], done["seed"], done[column]):
        values.setdefault(variant, {})[int(seed)] = scale * float(value)
    baseline = next((d for d in values if d.startswith("relu")), next(iter(values)))
    return values, baseline, runs.direction


def make_grid(folder: Path) -> str:
    """The quick ``design_space`` with 8 seeds in ``folder`` (run here if its store is not there); its URI."""
    uri = f"sqlite:///{folder.resolve()}/mlflow.db"
    if not (folder / "mlflow.db").exists():
        from studies.run.options import RunOptions
        from studies.run.launch import run_study

        folder.mkdir(parents=True, exist_ok=True)
        print(f"running the quick design_space with 8 seeds into {folder} (48 trials) ...", flush=True)
        run_study("design_space", RunOptions(overrides={"seeds": 8}, storage=f"sqlite:///{folder.resolve()}/optuna.db",
                                             tracking_uri=uri, device="cpu"))
    return uri


def print_replay(study: str, tracking_uri: str, replays: int, rng: np.random.Generator) -> None:
    values, baseline, direction = grid_values(study, tracking_uri)
    seeds = len(set.intersection(*(set(v) for v in values.values())))
    print(f"{study}: {len(values)} designs x {seeds} seeds; baseline {baseline}")
    for test in ("friedman", "t"):
        for futility in (FUTILITY, 0.0):
            r = replay(values, baseline, direction, replays, test, futility, rng)
            if test == "friedman" and futility == FUTILITY:
                best, better, worse = r["truth"]
                print(f"  the grid's answer: best {best}; better than {baseline}: {sorted(better) or 'none'}; "
                      f"worse: {sorted(worse) or 'none'}")
            print(f"  {test:8s} futility {futility:.1f}: {100 * r['used']:5.1f}% of the grid's trials; same best "
                  f"{100 * r['best']:5.1f}%; same answer {100 * r['same']:5.1f}%; grid's best among the race's best "
                  f"and tied, same claims {100 * r['among_tied']:5.1f}%  ({replays} seed orders)")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--races", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=8, help="seed budget (simulation)")
    p.add_argument("--replay", action="store_true", help="replay the 8-seed quick grid (made in --grid-dir if missing)")
    p.add_argument("--grid-dir", default="benchmarks/.race_grid", help="where the 8-seed quick grid's stores live")
    p.add_argument("--study", help="replay a finished grid study from MLflow instead")
    p.add_argument("--tracking-uri")
    p.add_argument("--replays", type=int, default=1000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.replay or args.study:
        if args.replay:
            print_replay("design_space", make_grid(Path(args.grid_dir)), args.replays, rng)
        if args.study:
            print_replay(args.study, args.tracking_uri, args.replays, rng)
        return
    print(f"{args.races} races per scenario, seeds 3..{args.seeds}, alpha 0.05; 'true': the true best named best and "
          f"every claimed difference to the baseline true")
    for name, (baseline, designs, shared) in SCENARIOS.items():
        for test in ("friedman", "t"):
            for futility in (FUTILITY, 0.0):
                plan = RacePlan(max_seeds=args.seeds, test=test, futility=futility)
                r = simulate(baseline, designs, shared, plan, args.races, rng)
                print(f"{name:42s} {test:8s} futility {futility:.1f}: true best dropped {100 * r['dropped']:5.2f}%; "
                      f"{100 * r['used']:5.1f}% of the trials; answer true {100 * r['race_true']:5.1f}% "
                      f"(full grid {100 * r['grid_true']:5.1f}%)")
    tied(args.races, rng)


#: the global null: every design the same (the first is the baseline); (designs, seed budget)
TIED = {"3 tied, seeds 3..5": (3, 5), "6 tied, seeds 3..8": (6, 8)}


def tied(races: int, rng: np.random.Generator) -> None:
    """Every design tied, continuous or counted on 100 validation images: a given design dropped, any dropped,
    and any difference to the baseline claimed (every one false here), with futility as ``run --race`` has it."""
    print(f"\nall designs tied, {races} races each, futility {FUTILITY} (Monte-Carlo sd at 1%: "
          f"{100 * np.sqrt(0.01 * 0.99 / races):.2f} points; at 5%: {100 * np.sqrt(0.05 * 0.95 / races):.2f})")
    for name, (count, seeds) in TIED.items():
        designs = {f"d{i}": (90.0, 1.0) for i in range(count)}
        for images in (None, 100):
            for test in ("friedman", "t"):
                for alpha in (0.01, 0.05):
                    plan = RacePlan(max_seeds=seeds, alpha=alpha, test=test, futility=FUTILITY)
                    r = simulate("d0", designs, 0.5, plan, races, rng, images)
                    print(f"{name:20s} {'continuous' if images is None else f'{images} images':10s} {test:8s} "
                          f"alpha {alpha}: a given design dropped {100 * r['dropped']:5.2f}%, any {100 * r['any']:5.2f}%, "
                          f"a difference to the baseline claimed {100 * r['claims']:5.2f}%; "
                          f"{100 * r['used']:5.1f}% of the trials")


if __name__ == "__main__":
    main()
