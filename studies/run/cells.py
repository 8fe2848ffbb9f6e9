"""Grid cells as Optuna trials: the axes that vary become categorical params, a cell's identity and label user
attrs (``studies.store.attrs``); a queued trial reads its cell back from its params."""
from __future__ import annotations

from typing import Any

import optuna

from studies.spec import DESIGN_AXES, variant_label
from studies.store import attrs
from studies.tracking import schema
from studies.tracking.schema import LATER_AXES


def axis_choices(cells: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The axes (and seed) that vary across the study's cells, with their values: a grid trial's Optuna params."""
    choices = {axis: sorted({c[axis] for c in cells}, key=str) for axis in DESIGN_AXES + (schema.SEED,)}
    return {axis: values for axis, values in choices.items() if len(values) > 1}


def suggest_cell(trial: optuna.Trial, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid cell enqueued for ``trial``, read back as Optuna params (so dashboards can analyse them)."""
    cell = dict(cells[0])  # axes with one value keep it
    for axis, values in axis_choices(cells).items():
        cell[axis] = (trial.suggest_int(axis, 0, max(values)) if axis == schema.SEED
                      else trial.suggest_categorical(axis, values))
    if cell_key(cell) != attrs.key_of(trial):  # queued for another design space
        raise ValueError(f"queued cell {attrs.key_of(trial)!r} is not a cell of this study's designs")
    return cell


def enqueue_cell(study: optuna.Study, cell: dict[str, Any], varying: dict[str, list[Any]],
                 retry_of: int | None = None) -> None:
    """Queue a grid cell: its varying axes as Optuna params, a short key and the variant as user attrs (and the
    number of the cell's trial that failed, if it is queued again)."""
    user = cell_attrs(cell) if retry_of is None else {**cell_attrs(cell), attrs.RETRY_OF: retry_of}
    study.enqueue_trial(params={axis: cell[axis] for axis in varying}, user_attrs=user)


def cell_attrs(cell: dict[str, Any]) -> dict[str, Any]:
    """The readable user attrs of a trial: variant label, seed and the cell's identity."""
    return {attrs.VARIANT: variant_label(cell), attrs.SEED: cell[schema.SEED], attrs.CELL_KEY: cell_key(cell)}


def cell_key(cell: dict[str, Any]) -> str:
    """A stable, short identity of a (design, seed) cell: ``activation=relu,generator=-,...,seed=1``; an axis added
    later (``LATER_AXES``) only where it applies, so a study run before it keeps its keys (and resumes)."""
    return ",".join(f"{k}={v}" for k, v in sorted(cell.items()) if not (k in LATER_AXES and v == "-"))
