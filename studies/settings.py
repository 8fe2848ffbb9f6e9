"""A study's settings, declared once: defaults, checks, CLI flags, the resume check and the logged params.

``Settings`` is closed: an unknown key is an error naming the valid ones. Each field's metadata says
its help, whether it changes results (a resumed study must keep it) and whether it is logged to
MLflow; the CLI flags of ``run``/``worker``, the worker command line, the resume check and a
trial's params are all derived from it. The training fields are ``TrainSettings``' (inherited, the
same declaration ``TrainConfig`` has), so ``Settings`` declares only what a study adds.
``Preset`` is a named variant of a study.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from studies.errors import UserError
from studies.training.config import TrainSettings, setting


@dataclass(frozen=True)
class _Scope:
    """What a study trains and how often: the first settings, so ``--help`` lists them first."""

    model: str = setting("tiny_cnn", "model name (see `list models`)")
    # mnist5k: embedded, offline, and not saturated by a short schedule (digits is)
    dataset: str = setting("mnist5k", "dataset name (see `list datasets`)")
    small_input: bool = setting(False, "CIFAR-style stem for small images")
    limit: int | None = setting(None, "take at most N examples of each source split", kind=int, low=2)
    seeds: int = setting(3, "seeds per design cell", results=False, low=1, high=1000)
    n_trials: int | None = setting(None, "trial budget of a search study (hpo)", kind=int, results=False, low=1,
                                   flag="--trials")


# Field order: _Scope's, then TrainSettings', then the measurements below (dataclasses take bases last to first).
@dataclass(frozen=True)
class Settings(TrainSettings, _Scope, Mapping):
    """Every setting of a study run; checked on creation. Reads like a mapping too (``s["lr"]``, ``s.get``)."""

    act_images: int = setting(2048, "held-out images each site's activation statistics are measured on after "
                              "training (0: not measured)", results=False, low=0)
    act_every: int = setting(0, "also measure the activation statistics every K epochs (0: only after training)",
                             results=False, low=0)
    save_model: bool = setting(False, "save each trial's trained weights (state_dict) as an artifact of its run",
                               results=False)

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
#: The training settings: what ``TrainConfig`` takes from a study's settings.
TRAINING = tuple(f.name for f in dataclasses.fields(TrainSettings))


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

