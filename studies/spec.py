"""Study definitions: a named design space, fixed settings, presets, sampler, pruner and metric.

A study is data, not code that runs: ``Study.settings(preset, overrides)`` resolves the typed
``Settings`` and ``Study.for_preset(preset).cells(settings)`` lists the grid cells (design x seed) to run.
Users define their own by writing a file with ``STUDY = Study(...)`` and passing its path.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from studies.design_options import canonical
from studies.errors import UserError
from acon.registry import Registry
from studies.tracking.schema import DESIGN_AXES, variant_parts
from studies.settings import Preset, Settings, check_keys
from studies.training.config import check_choice

def _is_import_path(value: Any) -> bool:
    from ablation.model_paths import is_import_path

    return is_import_path(value)


#: Every cell names the design axes (``DESIGN_AXES``); an axis that does not apply to a cell is "-".
NOT_APPLICABLE = "-"
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
PRESETS = ("quick", "default", "paper")

STUDIES = Registry("study", doc="name -> Study; a user file defines STUDY = Study(...) instead")


@dataclass(frozen=True)
class Study:
    """A named ablation or search: design cells (or a search space), settings, presets, metric."""

    name: str
    doc: str
    designs: tuple[dict[str, Any], ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, Preset | dict[str, Any]] = field(default_factory=dict)  # a dict is Preset(settings=dict)
    sampler: str = "grid"
    pruner: str = "none"
    metric: str = "val_acc"
    direction: str = "maximize"
    search_space: Callable[[optuna.Trial], dict[str, Any]] | None = None
    # your own training loop, train(model, data, settings, tracker) -> dict (studies.run.custom_loop), or its import path
    train: Callable[..., dict] | str | None = None

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("direction", self.direction, ("maximize", "minimize"))
        if self.sampler == "grid" and not self.designs:
            raise UserError(f"study {self.name!r}: a grid study needs at least one design cell")
        if self.sampler != "grid" and self.search_space is None:
            raise UserError(f"study {self.name!r}: a {self.sampler} study needs a search_space function")
        if self.train is not None and not callable(self.train) and not _is_import_path(self.train):
            raise UserError(f"study {self.name!r}: train={self.train!r} must be a function train(model, data, settings, "
                            f"tracker) or its import path (loops.py:train, mypkg.loops:train)")
        presets = {k: p if isinstance(p, Preset) else Preset(settings=dict(p)) for k, p in self.presets.items()}
        object.__setattr__(self, "presets", presets)
        check_keys(self.fixed, f"the fixed settings of study {self.name!r}")
        for name, preset in presets.items():
            check_keys(preset.settings, f"preset {name!r} of study {self.name!r}")
        for name in self.preset_names():
            self.settings(name)  # bad values fail when the study is defined, not when it runs

    @property
    def is_grid(self) -> bool:
        """True when the study is an exhaustive grid of design cells times seeds."""
        return self.sampler == "grid"

    def settings(self, preset: str = "quick", overrides: dict[str, Any] | None = None) -> Settings:
        """Resolved settings: the defaults, then the study's fixed values, the preset's, the overrides (None: unset)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        check_keys(given, "the overrides")
        return Settings(**{**self.fixed, **self.preset(preset).settings, **given})

    def preset(self, name: str) -> Preset:
        """The preset ``name``; a standard one the study does not define changes nothing."""
        if name not in self.presets and name not in PRESETS:
            raise UserError(f"unknown preset {name!r} for study {self.name!r}; valid choices: {', '.join(self.preset_names())}")
        return self.presets.get(name, Preset())

    def for_preset(self, name: str) -> Study:
        """This study with the design cells of preset ``name`` (its own, where it has some)."""
        designs = self.preset(name).designs
        return dataclasses.replace(self, designs=tuple(designs)) if designs else self

    def preset_names(self) -> list[str]:
        """Presets this study knows (the standard three plus its own)."""
        return sorted(set(PRESETS) | set(self.presets))

    def cells(self, settings: Settings) -> list[dict[str, Any]]:
        """Every grid cell: each design (axes filled with '-') times each seed, in a stable order."""
        seeds = range(int(settings["seeds"]))
        return [{**design_cell(d), "seed": s} for d, s in itertools.product(self.designs, seeds)]


def design_cell(design: dict[str, Any]) -> dict[str, Any]:
    """A design with every axis present; axes that do not apply to it are '-'.

    The generator applies to meta-ACON only, and r only to generators that take it, so
    ``layer`` with r=8 and ``layer`` with r=16 are one cell, not two. ``options`` (a dict or ``"k=3"``) becomes
    its canonical string (``studies.design_options``); an option that another axis sets is refused.
    """
    from ablation.generators import takes_option
    from acon.functional import check_gate

    unknown = set(design) - set(DESIGN_AXES)
    if unknown:
        raise UserError(f"unknown design axis {sorted(unknown)}; valid axes: {', '.join(DESIGN_AXES)}")
    cell = {axis: design.get(axis, NOT_APPLICABLE) for axis in DESIGN_AXES}
    if cell["gate"] != NOT_APPLICABLE:  # the gate of acon.functional.GATES: meta-ACON's and those that name one
        takes_gate = cell["activation"] == "meta_acon" or _takes(cell["activation"], "gate")
        cell["gate"] = check_gate(cell["gate"]) if takes_gate else NOT_APPLICABLE
    if cell["activation"] != "meta_acon":
        cell["generator"] = NOT_APPLICABLE
        if not _takes(cell["activation"], "r"):  # se_control and DY-ReLU take r; the baselines do not
            cell["r"] = NOT_APPLICABLE
    elif cell["generator"] != NOT_APPLICABLE and not takes_option(cell["generator"], "r"):
        cell["r"] = NOT_APPLICABLE
    if cell["options"] != NOT_APPLICABLE:  # the activation's own keywords, one canonical string ("k=3")
        cell["options"] = canonical(cell["options"]) or NOT_APPLICABLE
    return cell


def _takes(activation: Any, option: str) -> bool:
    """Whether the activation's factory names keyword ``option`` (an unknown name: no; it is refused elsewhere)."""
    from acon.activations import get_activation

    try:
        return option in inspect.signature(get_activation(activation)).parameters
    except (KeyError, TypeError, ValueError):
        return False


def variant_label(cell: dict[str, Any]) -> str:
    """A readable label of a design cell, e.g. ``meta_acon/channel/r16/all``."""
    return "/".join(variant_parts(cell))


def is_study_file(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a user's study file (``*.py`` or an existing file), not a built-in study."""
    return name_or_path.endswith(".py") or Path(name_or_path).is_file()
