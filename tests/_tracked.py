"""Runs for the report tests, written by the real writer (``studies.tracking.writer.Tracker``), not a copy of it."""
from __future__ import annotations

from dataclasses import dataclass, field

from studies.tracking.writer import Tracker

SETTINGS = {"model": "tiny_cnn", "dataset": "digits", "epochs": 3, "lr": 0.1}


@dataclass
class Trial:
    """One trial to log: its cell (axes and seed), final state, final values and per-epoch curves."""

    number: int
    cell: dict
    state: str = "COMPLETE"
    final: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    reason: str | None = None
    cost: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # what a search sampled for this trial, over SETTINGS


def write_study(uri: str, study: str, trials: list[Trial], *, axes, metric: str = "val_acc",
                sampler: str = "grid") -> Tracker:
    """A parent run and one child run per trial, through the same ``Tracker`` calls a trial makes."""
    tracker = Tracker(uri, study, study=study, optuna_study=f"{study}-quick", preset="quick", axes=tuple(axes),
                      metric=metric, direction="maximize", sampler=sampler)
    tracker.open_parent()
    tracker.describe_parent(f"**{study}**: a test study", SETTINGS)
    for t in trials:
        label = "/".join(str(t.cell[a]) for a in axes)
        run = tracker.start_trial(t.number, t.cell, {**SETTINGS, **t.settings}, label)
        if t.cost:
            tracker.log_cost(run, t.cost)
        for step, values in enumerate(zip(*t.curves.values()), 1):
            tracker.log_epoch(run, dict(zip(t.curves, values)), step=step)
        tracker.log_final(run, t.final)
        tracker.end_trial(run, t.state, t.reason)
    tracker.close_parent()
    return tracker


def grid(cells: list[dict], seeds, accuracy, *, epochs: int = 3, cost=None) -> list[Trial]:
    """One completed trial per cell and seed; ``accuracy(cell, seed)`` is its final val_acc, reached linearly."""
    trials = []
    for cell in cells:
        for seed in seeds:
            acc = float(accuracy(cell, seed))
            curve = [acc * (e + 1) / epochs for e in range(epochs)]
            trials.append(Trial(len(trials), {**cell, "seed": seed}, final={"val_acc": acc, "val_loss": 1 - acc},
                                curves={"val_acc": curve, "val_loss": [1 - v for v in curve]}, cost=cost or {}))
    return trials
