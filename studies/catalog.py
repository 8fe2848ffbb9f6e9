"""One place that maps the listable concepts to their registries (for ``run_study.py list``)."""
from __future__ import annotations

from acon.registry import Registry


def registry_for(what: str) -> Registry:
    """The registry of ``what``: studies, generators, placements, models, datasets or activations."""
    if what == "studies":
        from studies.spec import STUDIES, load_study

        load_study("design_space")  # registers the built-in studies
        return STUDIES
    if what == "generators":
        from ablation import GENERATORS

        return GENERATORS
    if what == "placements":
        from ablation import PLACEMENTS

        return PLACEMENTS
    if what == "models":
        from ablation import MODELS

        return MODELS
    if what == "datasets":
        from studies.data import DATASETS

        return DATASETS
    if what == "activations":
        from acon import ACTIVATIONS

        return ACTIVATIONS
    raise ValueError(f"cannot list {what!r}; valid choices: activations, datasets, generators, models, placements, studies")
