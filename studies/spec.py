"""Study definitions: a named design space, fixed settings, presets, sampler, pruner and metric.

A study is data, not code that runs: ``Study.settings(preset, overrides)`` resolves the
training settings and ``Study.cells(settings)`` lists the grid cells (design x seed) to run.
Users define their own by writing a file with ``STUDY = Study(...)`` and passing its path.
"""
from __future__ import annotations

import importlib.util
import inspect
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from acon.registry import Registry
from studies.train_config import check_choice

#: The design axes every cell names; an axis that does not apply to a cell is "-".
DESIGN_AXES = ("activation", "generator", "r", "placement")
NOT_APPLICABLE = "-"
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
PRESETS = ("quick", "default", "paper")

#: Settings every study starts from; study.fixed, then the preset, then the CLI override them.
BASE_SETTINGS: dict[str, Any] = {
    "model": "tiny_cnn",
    "dataset": "mnist5k",  # embedded, offline, and not saturated by a short schedule (digits is)
    "small_input": False,
    "seeds": 3,
    "epochs": 5,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "augment": False,
    "n_trials": None,
}

STUDIES = Registry("study", doc="name -> Study; a user file defines STUDY = Study(...) instead")


@dataclass(frozen=True)
class Study:
    """A named ablation or search: design cells (or a search space), settings, presets, metric."""

    name: str
    doc: str
    designs: tuple[dict[str, Any], ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: str = "grid"
    pruner: str = "none"
    metric: str = "val_acc"
    direction: str = "maximize"
    search_space: Callable[[optuna.Trial], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("direction", self.direction, ("maximize", "minimize"))
        if self.sampler == "grid" and not self.designs:
            raise ValueError(f"study {self.name!r}: a grid study needs at least one design cell")
        if self.sampler != "grid" and self.search_space is None:
            raise ValueError(f"study {self.name!r}: a {self.sampler} study needs a search_space function")

    @property
    def is_grid(self) -> bool:
        """True when the study is an exhaustive grid of design cells times seeds."""
        return self.sampler == "grid"

    def settings(self, preset: str = "quick", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resolved settings: base, then the study's fixed values, the preset's, the overrides."""
        if preset not in self.presets and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} for study {self.name!r}; valid choices: {', '.join(self.preset_names())}")
        merged = {**BASE_SETTINGS, **self.fixed, **self.presets.get(preset, {})}
        merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
        _check_settings(merged)
        return merged

    def preset_names(self) -> list[str]:
        """Presets this study knows (the standard three plus its own)."""
        return sorted(set(PRESETS) | set(self.presets))

    def cells(self, settings: dict[str, Any]) -> list[dict[str, Any]]:
        """Every grid cell: each design (axes filled with '-') times each seed, in a stable order."""
        designs = settings.get("designs") or self.designs
        seeds = range(int(settings["seeds"]))
        return [{**design_cell(d), "seed": s} for d, s in itertools.product(designs, seeds)]


def design_cell(design: dict[str, Any]) -> dict[str, Any]:
    """A design with every axis present; axes that do not apply to it are '-'.

    The generator applies to meta-ACON only, and r only to generators that take it, so
    ``layer`` with r=8 and ``layer`` with r=16 are one cell, not two.
    """
    from ablation.generators import takes_option

    unknown = set(design) - set(DESIGN_AXES)
    if unknown:
        raise ValueError(f"unknown design axis {sorted(unknown)}; valid axes: {', '.join(DESIGN_AXES)}")
    cell = {axis: design.get(axis, NOT_APPLICABLE) for axis in DESIGN_AXES}
    if cell["activation"] != "meta_acon":
        cell["generator"] = NOT_APPLICABLE
        if not _takes_r(cell["activation"]):  # se_control takes r; the baselines do not
            cell["r"] = NOT_APPLICABLE
    elif cell["generator"] != NOT_APPLICABLE and not takes_option(cell["generator"], "r"):
        cell["r"] = NOT_APPLICABLE
    return cell


def _takes_r(activation: Any) -> bool:
    """Whether the activation's factory names an ``r`` keyword (an unknown name: no; it is refused elsewhere)."""
    from acon.activations import get_activation

    try:
        return "r" in inspect.signature(get_activation(activation)).parameters
    except (KeyError, TypeError, ValueError):
        return False


def variant_label(cell: dict[str, Any]) -> str:
    """A readable label of a design cell, e.g. ``meta_acon/channel/r16/all``."""
    parts = [str(cell["activation"])]
    if cell.get("generator", NOT_APPLICABLE) != NOT_APPLICABLE:
        parts.append(str(cell["generator"]))
    if cell.get("r", NOT_APPLICABLE) != NOT_APPLICABLE:
        parts.append(f"r{cell['r']}")
    if cell.get("placement", NOT_APPLICABLE) != NOT_APPLICABLE:
        parts.append(str(cell["placement"]))
    return "/".join(parts)


def load_study(name_or_path: str) -> Study:
    """A built-in study by name, or the ``STUDY`` defined in a user's Python file."""
    if name_or_path.endswith(".py") or Path(name_or_path).is_file():
        return _load_study_file(Path(name_or_path))
    import studies.builtin  # noqa: F401  (registers the built-in studies)

    return STUDIES.get(name_or_path)


def _load_study_file(path: Path) -> Study:
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"user_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise ValueError(f"study file {path} must define STUDY = studies.Study(...)")
    return study


def _check_settings(s: dict[str, Any]) -> None:
    if not isinstance(s["seeds"], int) or not 1 <= s["seeds"] <= 1000:
        raise ValueError(f"seeds must be an integer in 1..1000, got {s['seeds']!r}")
    if not isinstance(s["epochs"], int) or not 1 <= s["epochs"] <= 10000:
        raise ValueError(f"epochs must be an integer in 1..10000, got {s['epochs']!r}")
    if s["n_trials"] is not None and (not isinstance(s["n_trials"], int) or s["n_trials"] < 1):
        raise ValueError(f"trials must be a positive integer, got {s['n_trials']!r}")
