"""Trials per hour with 1 and with N worker processes on this machine, as a ratio, in one run.

Each count runs the same study from empty stores (a journal file for Optuna, SQLite for MLflow)
through ``studies.run.workers.run_workers``: ``trials_per_hour`` includes starting the workers,
``steady_per_hour`` counts from the first trial's start to the last one's end. The cores are
split between the workers (torch threads per worker). Usage: ``python benchmarks/workers.py
[--study variants] [--preset quick] [--seeds 2] [--workers 1,2,4] [--device cuda] [--dataset digits]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from studies.run.options import RunOptions
from studies.run.workers import run_workers, threads_per_worker

TARGET = 1.7  # the bar for 2 workers against 1 on a 2-core machine


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options: study, preset, seeds, worker counts, device."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="variants", help="built-in study name or .py file (default variants)")
    p.add_argument("--preset", default="quick", help="preset (default quick: the embedded dataset, CPU)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per design cell (default 2)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the preset's)")
    p.add_argument("--dataset", help="dataset (default: the preset's; digits, the smallest embedded one, for a smoke run)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, the first is the baseline")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    return p.parse_args(argv)


def measure(study: str, options: RunOptions, workers: int) -> dict:
    """Run ``study`` from empty stores with ``workers`` processes; trials and seconds."""
    with tempfile.TemporaryDirectory(prefix="acon-bench-workers-") as tmp:
        options.storage = f"journal:///{Path(tmp) / 'optuna.journal'}"
        options.tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        start = time.perf_counter()
        result = run_workers(study, options, workers=workers)
        seconds = time.perf_counter() - start
        span = _training_span(result.study)
    done = result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0)
    return {"workers": workers, "threads_each": threads_per_worker(workers), "trials": done,
            "failed": result.counts.get("FAIL", 0), "seconds": round(seconds, 1),
            "trials_per_hour": round(3600 * done / seconds, 1),
            "steady_per_hour": round(3600 * done / span, 1)}


def _training_span(study) -> float:
    """Seconds from the first trial's start to the last trial's end: the rate once workers are up."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def main(argv=None) -> pd.DataFrame:
    """Measure each worker count in turn and print the table and the speed-up over the first."""
    args = parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    rows = []
    for workers in counts:
        options = RunOptions(preset=args.preset, overrides={"seeds": args.seeds, "epochs": args.epochs, "dataset": args.dataset},
                             device=args.device, progress=False)
        rows.append(measure(args.study, options, workers))
        print(f"{workers} worker(s): {rows[-1]['trials']} trials in {rows[-1]['seconds']} s", flush=True)
    table = pd.DataFrame(rows)
    table["speedup"] = (table["trials_per_hour"] / table["trials_per_hour"].iloc[0]).round(2)
    table["steady_speedup"] = (table["steady_per_hour"] / table["steady_per_hour"].iloc[0]).round(2)
    print(table.to_markdown(index=False))
    if 2 in counts and counts[0] == 1:
        row = table.loc[table["workers"] == 2].iloc[0]
        print(f"2 workers / 1 worker: {row['speedup']:.2f}x trials per hour with start-up, "
              f"{row['steady_speedup']:.2f}x once running (target {TARGET}x: "
              f"{'met' if row['speedup'] >= TARGET else 'NOT met'}; other processes on this machine add noise)")
    return table


if __name__ == "__main__":
    main()
