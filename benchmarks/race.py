"""Racing designs across seeds: its error rate and its savings, simulated and replayed on a finished grid.

    python benchmarks/race.py [--races 2000]                                   # simulated scenarios
    python benchmarks/race.py --study design_space --tracking-uri sqlite:///mlflow.db [--replays 1000]

Simulation: designs with known true means and noise (a seed effect shared by all designs, as when one seed
fixes the data order, plus each design's own noise), raced many times with each test; one line per scenario and
test: how often the truly best design was dropped (with ties, a given best one) and the trials used against
the full grid. Then the global null (every design tied, continuous or counted on 100 validation images, alpha
0.01 and 0.05): how often a given design, and any design, was dropped.

Replay: the trials of a finished full grid, raced again (``studies.race``, same plan as ``run --race``) with the
order of its seeds shuffled each time; prints the share of the grid's trials a race would have used, and how
often its answer differs from the grid's: the best design, and the designs better than the baseline (paired
t-test, Holm over the designs, alpha 0.05, each design on the seeds it ran).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
from scipy import stats

from studies.race import RacePlan, race

#: name -> (baseline, {design: (true mean, own noise)}, shared seed noise); accuracy points.
SCENARIOS = {
    "quick design_space (its means and spreads)": ("relu", {
        "relu": (90.5, 1.6), "silu": (92.1, 1.4), "acon_c": (94.9, 1.2), "layer": (65.2, 29.6),
        "channel": (93.8, 0.35), "pixel": (90.9, 0.9)}, 0.5),
    "all tied (every design is a best one)": ("d0", {f"d{i}": (90.0, 1.0) for i in range(6)}, 0.5),
    "one clear winner, five 2 points behind": ("d1", {"d0": (92.0, 1.0), **{f"d{i}": (90.0, 1.0) for i in range(1, 6)}},
                                               0.5),
    "ten designs, 0 to 3 points behind": ("d9", {f"d{i}": (90.0 - i / 3, 1.0) for i in range(10)}, 0.5),
    "two close at the top, four far behind": ("d5", {"d0": (95.0, 1.0), "d1": (94.5, 1.0),
                                                     **{f"d{i}": (85.0, 1.0) for i in range(2, 6)}}, 0.5),
}


def simulate(baseline: str, designs: dict[str, tuple[float, float]], shared: float, plan: RacePlan, races: int,
             rng: np.random.Generator, images: int | None = None) -> tuple[float, float, float]:
    """(share of races that dropped the truly best design (with ties, a given one), share that dropped any design
    but the baseline, mean share of the grid's trials used). ``images``: accuracies counted on a validation set of
    that many images (multiples of 100 / images points, so ties happen), else continuous."""
    names = list(designs)
    top = max(m for m, _ in designs.values())
    best = next(d for d, (m, _) in designs.items() if m == top and d != baseline)  # tied best: a given one
    errors, drops, used = 0, 0, 0.0
    for _ in range(races):
        effect = rng.normal(0, shared, plan.max_seeds)
        table = np.array([[m + effect[s] + rng.normal(0, sd) for s in range(plan.max_seeds)]
                          for m, sd in designs.values()])
        if images:
            table = np.round(table * images / 100) * 100 / images
        values = {d: dict(enumerate(row.tolist())) for d, row in zip(names, table)}
        state = race(names, {d: set(range(plan.max_seeds)) for d in names}, values, plan, baseline)
        errors += best in state.dropped
        drops += bool(state.dropped)
        used += len(state.wanted()) / (len(names) * plan.max_seeds)
    return errors / races, drops / races, used / races


def answer(values: dict[str, dict[int, float]], cells: set[tuple[str, int]], baseline: str) -> tuple[str, frozenset]:
    """The best design (highest mean over its seeds) and the designs better than the baseline (Holm, 0.05)."""
    own = {d: [v for s, v in by_seed.items() if (d, s) in cells] for d, by_seed in values.items()}
    best = max((d for d in own if own[d]), key=lambda d: np.mean(own[d]))
    tests = []
    for d in values:
        if d == baseline:
            continue
        seeds = [s for s in values[d] if (d, s) in cells and (baseline, s) in cells]
        if len(seeds) >= 2:
            diff = [values[d][s] - values[baseline][s] for s in seeds]
            p = 0.0 if np.std(diff) == 0 and np.mean(diff) > 0 else stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue
            tests.append((float(p) if np.isfinite(p) else 1.0, d))
    better, m = set(), len(tests)
    for i, (p, d) in enumerate(sorted(tests)):  # Holm's step-down
        if p >= 0.05 / (m - i):
            break
        better.add(d)
    return best, frozenset(better)


def replay(study: str, tracking_uri: str | None, replays: int, test: str, rng: np.random.Generator) -> None:
    """Race a finished grid again with its seeds in shuffled orders; print savings and agreement."""
    from report.collect import collect
    from studies.tracking import schema

    runs = collect(study, tracking_uri=tracking_uri)
    column = schema.metric_key(runs.metric)
    done = runs.kept[(runs.kept["state"] == "COMPLETE") & runs.kept[column].notna()]
    values: dict[str, dict[int, float]] = {}
    for variant, seed, value in zip(done["variant"], done["seed"], done[column]):
        values.setdefault(variant, {})[int(seed)] = 100.0 * float(value)
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    designs = list(values)
    baseline = next((d for d in designs if d.startswith("relu")), designs[0])
    plan = RacePlan(max_seeds=len(seeds), direction=runs.direction, test=test)
    grid_cells = {(d, s) for d in designs for s in seeds}
    truth = answer({d: {s: values[d][s] for s in seeds} for d in designs}, grid_cells, baseline)
    used, same_best, same_all = 0.0, 0, 0
    for _ in range(replays):
        order = rng.permutation(seeds)
        shuffled = {d: {i: values[d][int(s)] for i, s in enumerate(order)} for d in designs}
        state = race(designs, {d: set(range(len(seeds))) for d in designs}, shuffled, plan, baseline)
        cells = state.wanted()
        used += len(cells) / len(grid_cells)
        best, better = answer(shuffled, cells, baseline)
        same_best += best == truth[0]
        same_all += (best, better) == truth
    print(f"{study}: {len(designs)} designs x {len(seeds)} seeds = {len(grid_cells)} trials; baseline {baseline}; "
          f"grid's answer: best {truth[0]}, better than the baseline: {sorted(truth[1]) or 'none'}")
    print(f"race ({test}, min {plan.min_seeds} seeds, alpha {plan.alpha}) over {replays} seed orders: "
          f"{100 * used / replays:.1f}% of the grid's trials; same best design in {100 * same_best / replays:.1f}%, "
          f"same best and same designs better than the baseline in {100 * same_all / replays:.1f}%")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--races", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=8, help="seed budget (simulation)")
    p.add_argument("--study", help="replay a finished grid study from MLflow instead")
    p.add_argument("--tracking-uri")
    p.add_argument("--replays", type=int, default=1000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.study:
        for test in ("friedman", "t"):
            replay(args.study, args.tracking_uri, args.replays, test, rng)
        return
    print(f"{args.races} races per scenario and test, seeds 3..{args.seeds}, alpha 0.05 (friedman: each look at "
          f"alpha / looks, gated by the omnibus test; t: alpha / (looks x (designs - 1)))")
    for name, (baseline, designs, shared) in SCENARIOS.items():
        for test in ("friedman", "t"):
            error, _, used = simulate(baseline, designs, shared, RacePlan(max_seeds=args.seeds, test=test),
                                      args.races, rng)
            print(f"{name:42s} {test:8s} dropped the true best in {100 * error:5.2f}% of races; "
                  f"{100 * used:5.1f}% of the grid's trials")
    tied(args.races, rng)


#: the global null: every design the same (the first is the baseline); (designs, seed budget)
TIED = {"3 tied, seeds 3..5": (3, 5), "6 tied, seeds 3..8": (6, 8)}


def tied(races: int, rng: np.random.Generator) -> None:
    """Drop rates when every design ties, continuous or counted on 100 validation images: a given one, and any."""
    print(f"\nall designs tied, {races} races each (Monte-Carlo sd at 1%: "
          f"{100 * np.sqrt(0.01 * 0.99 / races):.2f} points; at 5%: {100 * np.sqrt(0.05 * 0.95 / races):.2f})")
    for name, (count, seeds) in TIED.items():
        designs = {f"d{i}": (90.0, 1.0) for i in range(count)}
        for images in (None, 100):
            for test in ("friedman", "t"):
                for alpha in (0.01, 0.05):
                    given, some, _ = simulate("d0", designs, 0.5, RacePlan(max_seeds=seeds, alpha=alpha, test=test),
                                              races, rng, images)
                    print(f"{name:20s} {'continuous' if images is None else f'{images} images':10s} {test:8s} "
                          f"alpha {alpha}: a given design dropped in {100 * given:5.2f}%, any in {100 * some:5.2f}%")

if __name__ == "__main__":
    main()
