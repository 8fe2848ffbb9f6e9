"""A study's settings, declared once: defaults, checks, CLI flags, the resume check and the logged params.

``Settings`` is closed: an unknown key is an error naming the valid ones. Each field's metadata says
its help, whether it changes results (a resumed study must keep it) and whether it is logged to
MLflow; the CLI flags of ``run``/``worker``, the worker command line, the resume check and a
trial's params are all derived from it. ``Preset`` is a named variant of a study.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from studies.errors import UserError
from studies.training.schedules import SCHEDULES
from studies.training.config import COMPILE_MODES, NONFINITE_ACTIONS, OPTIMIZERS, TrainConfig, check_choice, check_int


def setting(default: Any, help: str, *, kind: type | None = None, results: bool = True, logged: bool = True,
            low: int | None = None, high: int | None = None, choices: tuple[str, ...] | None = None,
            flag: str | None = None) -> Any:
    """A declared setting: a field whose metadata drives its check, its CLI flag, the resume check and logging."""
    meta = {"help": help, "kind": kind or type(default), "results": results, "logged": logged, "low": low,
            "high": high, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings(Mapping):
    """Every setting of a study run; checked on creation. Reads like a mapping too (``s["lr"]``, ``s.get``)."""

    model: str = setting("tiny_cnn", "model name (see `list models`)")
    # mnist5k: embedded, offline, and not saturated by a short schedule (digits is)
    dataset: str = setting("mnist5k", "dataset name (see `list datasets`)")
    small_input: bool = setting(False, "CIFAR-style stem for small images")
    limit: int | None = setting(None, "take at most N examples of each source split", kind=int, low=2)
    seeds: int = setting(3, "seeds per design cell", results=False, low=1, high=1000)
    n_trials: int | None = setting(None, "trial budget of a search study (hpo)", kind=int, results=False, low=1,
                                   flag="--trials")
    epochs: int = setting(5, "epochs per trial", low=1, high=10000)
    batch_size: int = setting(64, "training batch size", low=1)
    optimizer: str = setting("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(0.1, "base learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    nesterov: bool = setting(True, "Nesterov momentum (SGD)")
    weight_decay: float = setting(5e-4, "weight decay (not on biases, BN and ACON parameters)")
    schedule: str = setting("cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, "linear warm-up epochs")
    label_smoothing: float = setting(0.0, "label smoothing")
    augment: bool = setting(False, "random crop and flip")
    amp: bool = setting(True, "mixed precision on CUDA (bf16 where supported)")
    channels_last: bool = setting(False, "channels-last memory format", results=False)
    eval_batch_size: int = setting(1024, "evaluation batch size", results=False, logged=False, low=1)
    nonfinite: str = setting("raise", "on a non-finite loss: raise (the trial fails) or stop (keep the epochs so far)",
                             choices=NONFINITE_ACTIONS)
    act_images: int = setting(2048, "held-out images each site's activation statistics are measured on after "
                              "training (0: not measured)", results=False, low=0)
    act_every: int = setting(0, "also measure the activation statistics every K epochs (0: only after training)",
                             results=False, low=0)
    save_model: bool = setting(False, "save each trial's trained weights (state_dict) as an artifact of its run",
                               results=False)
    # off by default: on the quick study's model compiling costs more than it saves (benchmarks/README.md)
    compile: str = setting("off", "torch.compile each trial's model: off, on, or a torch.compile mode",
                           results=False, choices=tuple(COMPILE_MODES))

    def __post_init__(self) -> None:
        for f in FIELDS:
            _check(f, getattr(self, f.name))
        TrainConfig(**{k: self[k] for k in TRAINING})  # ranges and cross-checks (warm-up < epochs, ...)

    def __getitem__(self, key: str) -> Any:
        if key not in NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; unknown keys and bad values are refused."""
        check_keys(changes, "the changes")
        return dataclasses.replace(self, **changes)

    def results(self) -> dict[str, Any]:
        """The settings that change results: a study resumed with other values is refused."""
        return {f.name: getattr(self, f.name) for f in FIELDS if f.metadata["results"]}

    def logged(self) -> dict[str, Any]:
        """The settings logged as params of each trial's MLflow run."""
        return {f.name: getattr(self, f.name) for f in FIELDS if f.metadata["logged"]}


FIELDS = dataclasses.fields(Settings)
NAMES = tuple(f.name for f in FIELDS)
TRAINING = tuple(n for n in NAMES if n in {f.name for f in dataclasses.fields(TrainConfig)})


@dataclass(frozen=True)
class Preset:
    """A named variant of a study: settings over the study's fixed ones and, optionally, other design cells."""

    settings: dict[str, Any] = field(default_factory=dict)
    designs: tuple[dict[str, Any], ...] = ()


def check_keys(values: Mapping[str, Any], where: str) -> None:
    """Refuse keys that are not declared settings, naming the valid ones."""
    unknown = sorted(set(values) - set(NAMES))
    if unknown:
        hint = " (a preset's own designs go in Preset(designs=...))" if "designs" in unknown else ""
        raise UserError(f"unknown setting {', '.join(map(repr, unknown))} in {where}{hint}; "
                        f"valid settings: {', '.join(sorted(NAMES))}")


def flag(f: dataclasses.Field) -> str:
    """The CLI flag of a setting: ``--batch-size`` for ``batch_size`` unless declared otherwise."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def cli_flags() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(flag, argparse keyword arguments)`` of every setting; an absent flag leaves the setting as it is."""
    for f in FIELDS:
        meta = f.metadata
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": meta["help"]}
        if meta["kind"] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # --augment / --no-augment
        else:
            kwargs["type"] = meta["kind"]
            if meta["choices"]:
                kwargs["choices"] = sorted(meta["choices"])
        yield flag(f), kwargs


def to_argv(overrides: Mapping[str, Any]) -> list[str]:
    """The flags that give ``overrides`` again (the inverse of the CLI): ``--epochs 3 --no-augment``."""
    check_keys(overrides, "the overrides")
    argv: list[str] = []
    for f in FIELDS:
        value = overrides.get(f.name)
        if value is None:
            continue
        if f.metadata["kind"] is bool:
            argv.append(flag(f) if value else "--no-" + flag(f)[2:])
        else:
            argv += [flag(f), str(value)]
    return argv


def _check(f: dataclasses.Field, value: Any) -> None:
    meta, name = f.metadata, f.name
    if value is None and f.default is None:
        return
    kind = meta["kind"]
    if kind is int and meta["high"] is not None:
        if not isinstance(value, int) or isinstance(value, bool) or not meta["low"] <= value <= meta["high"]:
            raise UserError(f"{name} must be an integer in {meta['low']}..{meta['high']}, got {value!r}")
    elif kind is int:
        check_int(name, value, meta["low"] if meta["low"] is not None else 0)
    elif kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UserError(f"{name} must be a number, got {value!r}")
    elif kind is bool and not isinstance(value, bool):
        raise UserError(f"{name} must be True or False, got {value!r}")
    elif kind is str and meta["choices"]:
        check_choice(name, value, meta["choices"])
    elif kind is str and not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {value!r}")
