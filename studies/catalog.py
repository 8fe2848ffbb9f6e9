"""Where studies and the other listable concepts are found: ``load_study`` (a built-in by name, or a user's study
file) and ``registry_for`` (the registry ``run_study.py list`` prints). Importing it registers the built-in studies.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import studies.builtin  # noqa: F401  (registers the built-in studies in STUDIES)
from acon.registry import Registry
from studies.errors import UserError
from studies.spec import STUDIES, Study, is_study_file


#: Where each listable concept's registry lives (module, name): loaded on demand, so ``list studies`` needs no torch.
REGISTRIES = {"activations": ("acon.activations", "ACTIVATIONS"), "datasets": ("studies.data", "DATASETS"),
              "generators": ("ablation", "GENERATORS"), "models": ("ablation", "MODELS"),
              "placements": ("ablation", "PLACEMENTS"), "studies": ("studies.spec", "STUDIES")}


def registry_for(what: str) -> Registry:
    """The registry of ``what``: studies, generators, placements, models, datasets or activations."""
    if what not in REGISTRIES:
        raise ValueError(f"cannot list {what!r}; valid choices: {', '.join(REGISTRIES)}")
    module, name = REGISTRIES[what]
    return getattr(importlib.import_module(module), name)


def load_study(name_or_path: str) -> Study:
    """A built-in study by name, or the ``STUDY`` defined in a user's Python file."""
    if is_study_file(name_or_path):
        return _load_study_file(Path(name_or_path))
    return STUDIES.get(name_or_path)


def _load_study_file(path: Path) -> Study:
    if not path.is_file():
        raise UserError(f"study file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"user_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise UserError(f"study file {path} must define STUDY = studies.Study(...)")
    return study
