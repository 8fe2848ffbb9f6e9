"""``TrainConfig``: every setting of one training run, validated once when the object is made.

Bad values raise ``UserError`` (a ``ValueError``) naming the allowed range or the sorted valid choices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from studies.errors import UserError
from studies.training.schedules import SCHEDULES

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE_ACTIONS = ("raise", "stop")
#: ``compile`` values -> torch.compile keyword arguments (None: eager). "on" is inductor's default mode;
#: "aot_eager" traces forward and backward without generating code (a quick check of the graph).
COMPILE_MODES = {
    "off": None, "on": {}, "default": {"mode": "default"}, "reduce-overhead": {"mode": "reduce-overhead"},
    "max-autotune": {"mode": "max-autotune"}, "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
    "aot_eager": {"backend": "aot_eager"},
}
# ACON's per-channel parameters have shape (1, C, 1, 1), so ndim alone would decay them.
NO_DECAY_NAMES = ("p1", "p2", "beta", "p")


@dataclass
class TrainConfig:
    """Everything one training run needs besides the model and the data; validated on creation."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    device: str = "auto"
    amp: bool = True  # only used on CUDA: bf16 autocast where supported, else fp16 with a GradScaler
    channels_last: bool = False
    seed: int = 0
    threads: int | None = None
    workers: int = 0  # DataLoader workers for folder datasets
    eval_batch_size: int = 1024
    nonfinite: str = "raise"  # "stop": return the partial result with stopped_reason set
    # torch.compile the model for training: False/"off", True/"on" or a mode (COMPILE_MODES). Off by default:
    # on CPU the quick study's model paid 10-16 s to compile (4-8 s once torch's caches are warm) for no faster
    # step (benchmarks/README.md); on CUDA it is not measured yet (benchmarks/gpu.sh measures it).
    compile: bool | str = False

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_int("workers", self.workers, 0)
        check_int("seed", self.seed, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("nonfinite", self.nonfinite, NONFINITE_ACTIONS)
        if not isinstance(self.compile, bool):
            check_choice("compile", self.compile, COMPILE_MODES)
        check_range("lr", self.lr, 0.0, math.inf, low_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_range("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs), high_open=True)
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise UserError("nesterov=True needs momentum > 0; set nesterov=False or momentum in (0, 1)")


def check_int(name: str, value, low: int) -> None:
    """Refuse a non-integer (or bool) ``value`` or one below ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """Refuse a ``value`` not in ``choices``, listing them sorted."""
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; valid choices: {', '.join(sorted(choices))}")


def check_range(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """Refuse a ``value`` outside the interval, written with open/closed brackets in the message."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise UserError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
