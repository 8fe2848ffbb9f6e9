"""Write a large synthetic study into a real MLflow SQL store, fast, in the layout ``studies.tracking.schema`` defines.

For ``report_speed.py``: the parent run goes through ``studies.tracking.writer.Tracker``; the
5,000 child runs are inserted through MLflow's own ORM models in one transaction, with
every tag, param and metric name taken from ``studies.tracking.schema`` so the two cannot drift.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from studies.tracking import schema
from studies.tracking.writer import Tracker

SETTINGS = {"model": "tiny_cnn", "dataset": "digits", "epochs": "3", "lr": "0.1", "batch_size": "64", "optimizer": "sgd"}


@dataclass
class SyntheticTrial:
    """One trial: its design cell, seed, state, final metrics and per-epoch curves (names as trainers give them)."""

    number: int
    cell: dict[str, str]
    seed: int
    state: str = "COMPLETE"
    final: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)

    def tags(self, study: str, parent_id: str) -> dict[str, str]:
        """The child run's tags, as ``Tracker.start_trial`` and ``end_trial`` write them."""
        return {schema.PARENT_RUN: parent_id, schema.ROLE: schema.TRIAL, schema.STUDY: study,
                schema.TRIAL_NUMBER: str(self.number), schema.STATE: self.state,
                schema.VARIANT: "/".join(self.cell.values()), "mlflow.runName": self.name()}

    def name(self) -> str:
        """The run name ``Tracker`` gives it."""
        return schema.run_name({**self.cell, schema.SEED: self.seed})

    def params(self) -> dict[str, str]:
        """The child run's params: design axes, seed and training settings."""
        return {**SETTINGS, **self.cell, schema.SEED: str(self.seed)}

    def metrics(self) -> list[tuple[str, float, int]]:
        """(key, value, step): per-epoch metrics at steps 1..E, then the final values at step 0."""
        out = [(schema.EPOCH_METRICS.get(k, k), float(v), step) for k, vs in self.curves.items()
               for step, v in enumerate(vs, 1)]
        return out + [(schema.final_metric(k), float(v), 0) for k, v in self.final.items()]


def grid_trials(cells: list[dict[str, str]], seeds, accuracy, *, epochs: int = 3) -> list[SyntheticTrial]:
    """One completed trial per cell and seed; ``accuracy(cell, seed)`` gives its final val_acc."""
    trials = []
    for cell in cells:
        for seed in seeds:
            acc = float(accuracy(cell, seed))
            curve = [acc * (e + 1) / epochs for e in range(epochs)]
            final = {"val_acc": acc, "best_val_acc": acc, "val_loss": 1.0 - acc}
            trials.append(SyntheticTrial(len(trials), dict(cell), int(seed), final=final,
                                         curves={"val_acc": curve, "val_loss": [1 - v for v in curve]}))
    return trials


def write_study(study: str, trials: list[SyntheticTrial], *, axes, tracking_uri: str, metric: str = "val_acc") -> str:
    """A parent run (through ``Tracker``) and one child run per trial (bulk ORM insert); return the parent id."""
    from mlflow.store.tracking.dbmodels import models as m
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tracker = Tracker(tracking_uri, study, study=study, optuna_study=f"{study}-bench", preset="bench",
                      axes=tuple(axes), metric=metric, direction="maximize")
    parent = tracker.open_parent()
    eid, now, rows = tracker.experiment_id, int(time.time() * 1000), []
    for i, trial in enumerate(trials):
        rid = uuid.uuid4().hex
        rows.append(m.SqlRun(run_uuid=rid, name=trial.name(), experiment_id=int(eid),
                             status=schema.run_status(trial.state), start_time=now + i, end_time=now + i,
                             lifecycle_stage="active", source_type="LOCAL", user_id="bench",
                             artifact_uri=f"mlflow-artifacts:/{eid}/{rid}/artifacts"))
        rows += [m.SqlTag(run_uuid=rid, key=k, value=v) for k, v in trial.tags(study, parent).items()]
        rows += [m.SqlParam(run_uuid=rid, key=k, value=v) for k, v in trial.params().items()]
        metrics = trial.metrics()
        rows += [m.SqlMetric(run_uuid=rid, key=k, value=v, timestamp=now, step=s, is_nan=False) for k, v, s in metrics]
        latest = {k: (v, s) for k, v, s in sorted(metrics, key=lambda x: x[2])}
        rows += [m.SqlLatestMetric(run_uuid=rid, key=k, value=v, timestamp=now, step=s, is_nan=False)
                 for k, (v, s) in latest.items()]
    store = SqlAlchemyStore(tracking_uri, "mlartifacts")
    with store.ManagedSessionMaker() as session:
        session.add_all(rows)
    tracker.close_parent()
    return parent
