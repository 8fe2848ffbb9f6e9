"""Write synthetic studies into a real MLflow store, in the layout ``studies.tracking`` uses.

For tests and benchmarks of the report: ``write_study`` goes through ``MlflowClient``;
``bulk=True`` inserts the same rows through MLflow's own ORM models in one transaction,
which makes a 5,000-run store in seconds instead of minutes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "RUNNING": "RUNNING"}
SETTINGS = {"model": "tiny_cnn", "dataset": "digits", "epochs": "3", "lr": "0.1", "batch_size": "64", "optimizer": "sgd"}


@dataclass
class SyntheticTrial:
    """One trial: its design cell, seed, state, final metrics and per-epoch curves."""

    number: int
    cell: dict[str, str]
    seed: int
    state: str = "COMPLETE"
    final: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    fail_reason: str = ""

    def tags(self, study: str, parent_id: str) -> dict[str, str]:
        """The child run's tags."""
        tags = {"mlflow.parentRunId": parent_id, "acon.role": "trial", "acon.study": study,
                "optuna.trial_number": str(self.number), "acon.state": self.state,
                "acon.variant": "/".join(self.cell.values()), "mlflow.runName": f"trial-{self.number}"}
        if self.fail_reason:
            tags["acon.fail_reason"] = self.fail_reason
        return tags

    def params(self) -> dict[str, str]:
        """The child run's params: design axes, seed and training settings."""
        return {**SETTINGS, **self.cell, "seed": str(self.seed)}

    def metrics(self, now: int) -> list[Metric]:
        """Per-epoch metrics at steps 1..E, then the final values at step 0."""
        out = [Metric(k, float(v), now, step) for k, vs in self.curves.items() for step, v in enumerate(vs, 1)]
        return out + [Metric(k, float(v), now, 0) for k, v in self.final.items()]


def sqlite_store(path) -> str:
    """A fresh, empty MLflow SQLite store at ``path``; returns its tracking URI.

    Creating the schema (MLflow's migrations) takes seconds, so an empty store is made once
    per MLflow version and copied; the copy is a real store, migrated by MLflow itself.
    """
    template = Path(tempfile.gettempdir()) / f"acon_report_mlflow_{mlflow.__version__}.db"
    if not template.exists():
        partial = template.with_suffix(f".{os.getpid()}.tmp")
        MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
        os.replace(partial, template)  # atomic: parallel test runs never see half a file
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def write_study(study: str, trials: list[SyntheticTrial], *, axes, metric: str = "val_acc",
                direction: str = "maximize", tracking_uri: str | None = None, bulk: bool = False,
                artifact_location: str | None = None) -> str:
    """Write a parent run and one child run per trial; return the parent run id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(study)
    eid = exp.experiment_id if exp else client.create_experiment(study, artifact_location=artifact_location)
    tags = {"acon.role": "parent", "acon.study": study, "acon.axes": ",".join(axes), "acon.metric": metric,
            "acon.direction": direction}
    parent = client.create_run(eid, run_name=study, tags=tags).info.run_id
    if bulk:
        _bulk_insert(client, eid, study, parent, trials)
    else:
        for trial in trials:
            _write_trial(client, eid, study, parent, trial)
    client.set_terminated(parent, "FINISHED")
    return parent


def _write_trial(client: MlflowClient, eid: str, study: str, parent: str, trial: SyntheticTrial) -> str:
    """One child run through the public client API."""
    run = client.create_run(eid, tags=trial.tags(study, parent))
    rid = run.info.run_id
    params = [Param(k, v) for k, v in trial.params().items()]
    client.log_batch(rid, metrics=trial.metrics(int(time.time() * 1000)), params=params)
    client.set_terminated(rid, RUN_STATUS[trial.state])
    return rid


def _bulk_insert(client: MlflowClient, eid: str, study: str, parent: str, trials: list[SyntheticTrial]) -> None:
    """All child runs in one SQL transaction through MLflow's ORM models (SQL stores only)."""
    from mlflow.store.tracking.dbmodels import models as m

    store = client._tracking_client.store
    now = int(time.time() * 1000)
    rows = []
    for i, trial in enumerate(trials):
        rid = uuid.uuid4().hex
        rows.append(m.SqlRun(run_uuid=rid, name=f"trial-{trial.number}", experiment_id=int(eid),
                             status=RUN_STATUS[trial.state], start_time=now + i, end_time=now + i,
                             lifecycle_stage="active", source_type="LOCAL", user_id="bench",
                             artifact_uri=f"mlflow-artifacts:/{eid}/{rid}/artifacts"))
        rows += [m.SqlTag(run_uuid=rid, key=k, value=v) for k, v in trial.tags(study, parent).items()]
        rows += [m.SqlParam(run_uuid=rid, key=k, value=v) for k, v in trial.params().items()]
        metrics = trial.metrics(now)
        rows += [m.SqlMetric(run_uuid=rid, key=x.key, value=x.value, timestamp=x.timestamp, step=x.step, is_nan=False)
                 for x in metrics]
        latest = {x.key: x for x in sorted(metrics, key=lambda x: x.step)}
        rows += [m.SqlLatestMetric(run_uuid=rid, key=x.key, value=x.value, timestamp=x.timestamp, step=x.step,
                                   is_nan=False) for x in latest.values()]
    with store.ManagedSessionMaker() as session:
        session.add_all(rows)


def grid_trials(cells: list[dict[str, str]], seeds, accuracy, *, epochs: int = 3, extra=None) -> list[SyntheticTrial]:
    """One completed trial per cell and seed; ``accuracy(cell, seed)`` gives its final val_acc."""
    trials = []
    for cell in cells:
        for seed in seeds:
            acc = float(accuracy(cell, seed))
            curve = [acc * (e + 1) / epochs for e in range(epochs)]
            final = {"final_val_acc": acc, "best_val_acc": acc, "final_val_loss": 1.0 - acc, **(extra or {})}
            trials.append(SyntheticTrial(len(trials), dict(cell), int(seed), final=final,
                                         curves={"val_acc": curve, "val_loss": [1 - v for v in curve]}))
    return trials
