"""Bring your own training loop: a study's ``train=`` function runs each trial instead of the built-in trainer.

The function is ``train(model, data, settings, tracker) -> dict`` of final metrics (the study's objective,
``val_acc`` by default, among them). ``tracker`` is a ``TrialTracker``: ``log_epoch(epoch, **metrics)`` logs
to the trial's MLflow run (``train_loss`` as ``train/loss``, ``val_acc`` as ``val/acc``, ...) and reports the
objective to Optuna, raising ``optuna.TrialPruned`` when Optuna prunes; ``should_stop()`` is True once Ctrl-C
or SIGTERM arrived (return then: the trial is recorded as interrupted, a rerun runs it again). Everything else
(design cells, seeds, resume, workers, MLflow layout, the report) is the same as with the built-in loop.
"""
from __future__ import annotations

from typing import Any, Callable

from studies.errors import UserError
from studies.run import interrupt

TrainFn = Callable[..., dict]


class TrialTracker:
    """What a custom loop gets: the trial's seed, device and design cell, epoch logging and the stop signal."""

    def __init__(self, report: Callable[[int, dict[str, Any]], None], *, seed: int, device: str,
                 cell: dict[str, Any], epochs: int):
        self._report = report
        self.seed, self.device, self.cell, self.epochs = seed, device, dict(cell), epochs
        self.logged = 0  # epochs logged so far

    def log_epoch(self, epoch: int, **metrics: float) -> None:
        """Log one epoch's metrics (step = ``epoch``, from 1) and report the objective; raises
        ``optuna.TrialPruned`` when Optuna prunes the trial (let it propagate)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise UserError(f"tracker.log_epoch: epoch must be an integer >= 1, got {epoch!r}")
        self._report(epoch, {k: _number(k, v) for k, v in metrics.items()})
        self.logged = epoch

    def should_stop(self) -> bool:
        """True once Ctrl-C or SIGTERM arrived: finish the current step and return."""
        return interrupt.pending()


def _number(name: str, value: Any) -> float:
    """A logged metric as a float; anything else is the loop's mistake, named (Optuna and MLflow take numbers)."""
    try:
        if value is None or isinstance(value, (bool, str)):
            raise TypeError(name)
        return float(value)  # a Python or NumPy number, a one-element tensor
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"tracker.log_epoch: {name}={value!r} is not a number; log a metric only at the epochs "
                        f"it has a value") from None


def resolve_train(train: TrainFn | str) -> TrainFn:
    """The training function of a study: a callable, or an import path ``loops.py:train`` / ``pkg.mod:train``."""
    if callable(train):
        return train
    from ablation.model_paths import is_import_path, load_attribute

    if not is_import_path(train):
        raise UserError(f"train={train!r} is neither a function nor an import path like loops.py:train or pkg.mod:train")
    return load_attribute(train, "training loop")


def final_value(final: Any, metric: str, fn: TrainFn) -> float:
    """The objective from what a custom loop returned; a missing or non-numeric one is the loop's error."""
    name = getattr(fn, "__name__", "train")
    if not isinstance(final, dict):
        raise UserError(f"training loop {name} returned {type(final).__name__}; it must return a dict of final metrics")
    if metric not in final:
        raise UserError(f"training loop {name} returned {sorted(final)} without the study's objective {metric!r}")
    try:
        return float(final[metric])
    except (TypeError, ValueError):
        raise UserError(f"training loop {name} returned {metric}={final[metric]!r}, not a number") from None
