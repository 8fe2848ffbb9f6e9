"""Our small MLflow bridge: one parent run per study, one child run per Optuna trial.

Written against ``MlflowClient`` (no global active run), so trials in other processes or
machines attach to the same parent by its run id. Child run status mirrors the trial:
COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED (reason in ``acon.fail_reason``).
"""
from __future__ import annotations

import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from studies.storage import StorageError, first_line, mask_url

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}
PARENT_ATTR = "mlflow_parent_run_id"


class Tracker:
    """Logs one study (parent run) and its trials (child runs) to an MLflow tracking store."""

    def __init__(self, tracking_uri: str, experiment: str, *, study: str, optuna_study: str, preset: str,
                 axes: tuple[str, ...], metric: str, direction: str):
        self.uri = tracking_uri
        self.client = _connect(tracking_uri)
        self.experiment_id = self._experiment(experiment)
        self.parent_tags = {
            "acon.role": "parent", "acon.study": study, "acon.preset": preset, "optuna.study_name": optuna_study,
            "acon.axes": ",".join(axes), "acon.metric": metric, "acon.direction": direction,
        }
        self.parent_id: str | None = None

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri, name))
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def open_parent(self, run_id: str | None = None, storage_url: str = "") -> str:
        """Reopen the study's parent run (by id, else by tags) or create it; mark it RUNNING."""
        run_id = run_id if run_id and self._exists(run_id) else self._find_parent()
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.parent_tags["optuna.study_name"],
                                         tags={**self.parent_tags, "acon.storage": mask_url(storage_url)})
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.parent_id = run_id
        return run_id

    def attach_parent(self, run_id: str) -> None:
        """Use an existing parent run (a worker joining a study) without changing its status."""
        if not self._exists(run_id):
            raise StorageError(f"parent run {run_id} is not in the tracking store {mask_url(self.uri)}")
        self.parent_id = run_id

    def close_parent(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED, KILLED or FAILED)."""
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def start_trial(self, number: int, cell: dict[str, Any], settings: dict[str, Any], label: str) -> str:
        """Create the child run of trial ``number`` with its design cell and settings as params."""
        tags = {"mlflow.parentRunId": self.parent_id, "acon.role": "trial", "acon.study": self.parent_tags["acon.study"],
                "optuna.study_name": self.parent_tags["optuna.study_name"], "optuna.trial_number": str(number),
                "acon.state": "RUNNING", "acon.variant": label}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}-{label}", tags=tags)
        params = {**settings, **cell}
        self.client.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in sorted(params.items())])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Log finite metrics, at ``step`` (an epoch) or as final values."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def end_trial(self, run_id: str, state: str, reason: str | None = None) -> None:
        """Close a child run: its status and ``acon.state`` tag mirror the Optuna trial state."""
        tags = [RunTag("acon.state", "FAIL" if state == "INTERRUPTED" else state)]
        if reason:
            tags.append(RunTag("acon.fail_reason", reason[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status=RUN_STATUS[state])

    def fail_if_running(self, run_id: str, reason: str) -> None:
        """Mark a child run FAILED if it still says RUNNING (its worker died)."""
        if self._exists(run_id) and self.client.get_run(run_id).info.status == "RUNNING":
            self.end_trial(run_id, "FAIL", reason)

    def _find_parent(self) -> str | None:
        name = self.parent_tags["optuna.study_name"].replace("'", "\\'")
        runs = self.client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                       filter_string=f"tags.`acon.role` = 'parent' and tags.`optuna.study_name` = '{name}'")
        return runs[0].info.run_id if runs else None

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go next to the database file, not under the current directory."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # servers and other stores choose their own artifact root
    db = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).as_uri()


def _connect(uri: str) -> MlflowClient:
    """A client for ``uri``, checked once with no retries so a dead server fails fast and clearly."""
    try:
        with _fast_http():
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        return client
    except Exception as exc:
        raise StorageError(f"cannot reach MLflow tracking store {mask_url(uri)}: {first_line(exc)[:300]}") from exc


@contextmanager
def _fast_http() -> Iterator[None]:
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: v for k, v in keys.items() if old[k] is None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


def _param_str(value: Any) -> str:
    return "-" if value is None else str(value)

