"""Time building a report (collect + ablation table) from an MLflow store with 5,000 child runs.

    python benchmarks/report_speed.py [--runs 5000] [--store DIR]

The store is made once with ``synthetic.py`` next to this file (bulk ORM inserts) and reused if --store
is given and already holds it. Prints the time of each stage; the target is under 5 s.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import mlflow

from report import build_report
from report.collect import collect
from synthetic import grid_trials, write_study  # benchmarks/synthetic.py

STUDY = "bench_ablation"
AXES = ("activation", "generator", "r", "placement")


def _cells() -> list[dict[str, str]]:
    """A 20-cell design grid: relu, acon_c, and meta_acon over generators x r x placements."""
    cells = [{"activation": "relu", "generator": "-", "r": "-", "placement": "all"},
             {"activation": "acon_c", "generator": "-", "r": "-", "placement": "all"}]
    for gen, r, place in itertools.product(("channel", "layer", "pixel"), ("4", "8", "16"), ("all", "last")):
        if gen == "channel" or r == "16":
            cells.append({"activation": "meta_acon", "generator": gen, "r": r if gen == "channel" else "-",
                          "placement": place})
    return cells


def make_store(uri: str, runs: int) -> None:
    """Write a study of ``runs`` child runs (cells x seeds) with 10-epoch curves."""
    cells = _cells()
    seeds = range(-(-runs // len(cells)))
    trials = grid_trials(cells, seeds, lambda c, s: 0.7 + 0.01 * len(c["generator"]) + 0.001 * (s % 7), epochs=10)
    write_study(STUDY, trials[:runs], axes=AXES, tracking_uri=uri)


def main() -> None:
    """Build the store if needed, then time collect and the full report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--store", type=Path, default=None, help="folder for mlflow.db (reused when present)")
    args = ap.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="report_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.MlflowClient().get_experiment_by_name(STUDY) is None:
        t0 = time.perf_counter()
        make_store(uri, args.runs)
        print(f"made a store of {args.runs} child runs in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    runs = collect(STUDY, tracking_uri=uri)
    t1 = time.perf_counter()
    text = build_report(STUDY, tracking_uri=uri, log_to_mlflow=False)
    t2 = time.perf_counter()
    print(text)
    print(f"collect: {len(runs.trials)} runs in {t1 - t0:.2f} s; build_report (collect + table): {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
