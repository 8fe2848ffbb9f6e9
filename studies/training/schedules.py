"""Learning-rate schedules as per-step multipliers of the base lr, with linear warm-up.

``lr_factor(schedule, step, total, warmup)`` is a pure function so a schedule can be plotted and tested
without an optimizer; ``make_scheduler`` wraps it in a ``LambdaLR`` stepped once per batch.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCHEDULES = ("cosine", "linear", "onecycle")

# One-cycle's defaults, as in torch.optim.lr_scheduler.OneCycleLR.
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total`` steps, after ``warmup`` warm-up steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid choices: {', '.join(sorted(SCHEDULES))}")
    if schedule == "onecycle":
        return _onecycle(step, total, warmup)
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 - t


def _onecycle(step: int, total: int, warmup: int) -> float:
    """Cosine up from lr/25 to lr over the warm-up (30% of steps if none given), then cosine down to lr/25e4."""
    up = warmup or max(1, round(ONECYCLE_PCT_START * total))
    low, final = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    if step < up:
        return _cos_between(low, 1.0, step / up)
    return _cos_between(1.0, final, (step - up) / max(1, total - up))


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total: int, warmup: int = 0):
    """A LambdaLR applying ``lr_factor`` per optimizer step."""
    import torch  # here, so that the command line reads SCHEDULES without loading torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total, warmup))
