"""What a trial builds before it trains: its model (and the ReLU baseline it is measured against), the dataset
splits, and the ``TrainConfig`` from the study's settings."""
from __future__ import annotations

import functools
from typing import Any

from studies.design_options import parse
from studies.spec import NOT_APPLICABLE


@functools.lru_cache(maxsize=4)
def load_data(name: str, data_dir: str | None, download: bool, limit: int | None):
    """Load a dataset once per process; the split seed is fixed so every trial sees the same split."""
    from studies.data import load_dataset

    return load_dataset(name, data_dir=data_dir, download=download, limit=limit, seed=0)


def build_variant(cell: dict[str, Any], settings: dict[str, Any], data) -> tuple[Any, list]:
    """The cell's model (initialised from the cell's seed) and the sites it changed."""
    import torch

    kwargs = {"activation": cell["activation"], "placement": _axis(cell, "placement", "all")}
    if _axis(cell, "generator", None) is not None:
        kwargs["generator"] = cell["generator"]
    if _axis(cell, "r", None) is not None:
        kwargs["r"] = int(cell["r"])
    if _axis(cell, "gate", None) is not None:
        kwargs["gate"] = cell["gate"]
    kwargs.update(parse(_axis(cell, "options", "")))  # the activation's own keywords, typed again ("k=3" -> k=3)
    torch.manual_seed(int(cell["seed"]))
    return _build(settings, data, **kwargs)


def build_baseline(settings: dict[str, Any], data) -> Any:
    """The ReLU model of the same architecture, no site changed."""
    return _build(settings, data, activation="relu", placement="none")[0]


def _build(settings: dict[str, Any], data, **kwargs: Any) -> tuple[Any, list]:
    from ablation import build_model

    return build_model(settings["model"], num_classes=data.num_classes, in_channels=data.in_channels,
                       small_input=settings["small_input"], input_size=data.image_size, **kwargs)


def complexity(model, baseline, data, n_sites: int) -> dict[str, float]:
    """Params and FLOPs of the model and its ReLU baseline, for one input image."""
    from ablation.complexity import overhead

    shape = (1, data.in_channels, data.image_size, data.image_size)
    return {**overhead(model, baseline, shape), "sites": n_sites}


def train_config(settings: dict[str, Any], *, seed: int, device: str, threads: int | None):
    """A validated ``TrainConfig`` from the study settings (an HPO trial's suggestions merged in)."""
    from studies.settings import TRAINING
    from studies.training.loop import TrainConfig

    values = {k: settings[k] for k in TRAINING if k in settings}
    return TrainConfig(**{**values, "seed": seed, "device": device, "threads": threads})


def _axis(cell: dict[str, Any], axis: str, default: Any) -> Any:
    value = cell.get(axis, NOT_APPLICABLE)
    return default if value == NOT_APPLICABLE else value
