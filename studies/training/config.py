"""The training settings, declared once: ``TrainSettings`` (what a study chooses) and ``TrainConfig`` (one run).

Each field is a ``setting``: its default, help and the metadata its one check reads. ``studies.settings.Settings``
takes the same fields by inheritance, so a study and the training loop cannot disagree on a default or a check.
Bad values raise ``UserError`` (a ``ValueError``) naming the allowed range or the sorted valid choices.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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


def setting(default: Any, help: str, *, kind: type | None = None, results: bool = True, logged: bool = True,
            low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            choices: tuple[str, ...] | None = None, flag: str | None = None) -> Any:
    """A declared setting: a field whose metadata drives its check, its CLI flag, the resume check and logging.

    ``low``/``high`` bound a number (``*_open``: the bound itself is refused); ``results``: a resumed study must
    keep it; ``logged``: a param of each trial's MLflow run; ``flag``: the CLI flag when not ``--field-name``.
    """
    meta = {"help": help, "kind": kind or type(default), "results": results, "logged": logged, "low": low,
            "high": high, "low_open": low_open, "high_open": high_open, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainSettings:
    """The training settings a study chooses; every field is checked on creation (``check_setting``)."""

    epochs: int = setting(5, "epochs per trial", low=1, high=10000)
    # 64: the MNIST-sized studies (quick preset) train with it; the CIFAR presets set 128 themselves
    batch_size: int = setting(64, "training batch size", low=1)
    optimizer: str = setting("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(0.1, "base learning rate", low=0.0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0, high_open=True)
    nesterov: bool = setting(True, "Nesterov momentum (SGD)")
    weight_decay: float = setting(5e-4, "weight decay (not on biases, BN and ACON parameters)", low=0.0)
    schedule: str = setting("cosine", "learning-rate schedule", choices=SCHEDULES)
    # below epochs too: a cross-check in __post_init__
    warmup_epochs: float = setting(0.0, "linear warm-up epochs", low=0.0)
    label_smoothing: float = setting(0.0, "label smoothing", low=0.0, high=1.0, high_open=True)
    augment: bool = setting(False, "random crop and flip")
    # only used on CUDA: bf16 autocast where supported, else fp16 with a GradScaler
    amp: bool = setting(True, "mixed precision on CUDA (bf16 where supported)")
    channels_last: bool = setting(False, "channels-last memory format", results=False)
    eval_batch_size: int = setting(1024, "evaluation batch size", results=False, logged=False, low=1)
    # "stop": the loop returns the partial result with stopped_reason set
    nonfinite: str = setting("raise", "on a non-finite loss: raise (the trial fails) or stop (keep the epochs so far)",
                             choices=NONFINITE_ACTIONS)
    # Off by default: on CPU the quick study's model paid 10-16 s to compile (4-8 s once torch's caches are warm)
    # for no faster step (benchmarks/README.md); on CUDA it is not measured yet (benchmarks/gpu.sh measures it).
    compile: str = setting("off", "torch.compile each trial's model: off, on, or a torch.compile mode",
                           results=False, choices=tuple(COMPILE_MODES))

    def __post_init__(self) -> None:
        # compile is a mode name; Python callers may also say True/False ("on"/"off"), converted here only
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        for f in dataclasses.fields(self):  # a subclass's own fields too: Settings, TrainConfig
            check_setting(f, getattr(self, f.name))
        check_range("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs), high_open=True)
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise UserError("nesterov=True needs momentum > 0; set nesterov=False or momentum in (0, 1)")


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Everything one training run needs besides the model and the data: the training settings, and where
    and with which seed this run trains; validated on creation."""

    device: str = setting("auto", "device to train on", choices=DEVICES)
    seed: int = setting(0, "seed of the initial weights and the batch order", low=0)
    threads: int | None = setting(None, "torch threads (None: torch's default)", kind=int, low=1)
    workers: int = setting(0, "DataLoader workers for folder datasets", low=0)


def check_setting(f: dataclasses.Field, value: Any) -> None:
    """Refuse a ``value`` that the declared setting ``f`` does not allow (``None`` only where it is the default)."""
    meta, name = f.metadata, f.name
    if value is None and f.default is None:
        return
    kind = meta["kind"]
    if kind is int and meta["high"] is not None:
        if not isinstance(value, int) or isinstance(value, bool) or not meta["low"] <= value <= meta["high"]:
            raise UserError(f"{name} must be an integer in {meta['low']}..{meta['high']}, got {value!r}")
    elif kind is int:
        check_int(name, value, meta["low"] if meta["low"] is not None else 0)
    elif kind is float:
        low, high = meta["low"], meta["high"]
        check_range(name, value, -math.inf if low is None else low, math.inf if high is None else high,
                    low_open=meta["low_open"], high_open=meta["high_open"])
    elif kind is bool and not isinstance(value, bool):
        raise UserError(f"{name} must be True or False, got {value!r}")
    elif kind is str and meta["choices"]:
        check_choice(name, value, meta["choices"])
    elif kind is str and not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {value!r}")


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
