"""The one MLflow writer: one parent run per study, one child run per Optuna trial.

Written against ``MlflowClient`` (no global active run), so trials in other processes or
machines attach to the same parent by its run id. Every name it writes comes from
``studies.tracking.schema``; the launcher, the runner and the report all write through ``Tracker``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from studies.tracking import schema
from studies.errors import first_line
from studies.store.storage import StorageError, mask_url



class Tracker:
    """Logs one study (parent run) and its trials (child runs) to an MLflow tracking store."""

    def __init__(self, tracking_uri: str, experiment: str | None, *, study: str, optuna_study: str, preset: str,
                 axes: tuple[str, ...], metric: str, direction: str, sampler: str = schema.GRID,
                 outage_limit: float | str | None = None):
        self.uri = tracking_uri
        self.client = _connect(tracking_uri, outage_limit)
        self.experiment_id = self._experiment(experiment) if experiment else None
        self.objective = schema.final_metric(metric)
        self.parent_tags = {
            schema.ROLE: schema.PARENT, schema.STUDY: study, schema.PRESET: preset, schema.OPTUNA_STUDY: optuna_study,
            schema.AXES: ",".join(axes), schema.METRIC: self.objective, schema.DIRECTION: direction,
            schema.SAMPLER: sampler,
        }
        self.parent_id: str | None = None

    @classmethod
    def attach(cls, tracking_uri: str, parent_run_id: str, outage_limit: float | str | None = None) -> "Tracker":
        """A writer for an existing study's parent run (launcher, report), read from the run's tags."""
        tracker = cls.__new__(cls)
        tracker.uri, tracker.client = tracking_uri, _connect(tracking_uri, outage_limit)
        run = tracker.client.get_run(parent_run_id)
        tracker.experiment_id, tracker.parent_id = run.info.experiment_id, parent_run_id
        tracker.parent_tags = {k: v for k, v in run.data.tags.items() if k.startswith(("acon.", "optuna."))}
        tracker.objective = tracker.parent_tags.get(schema.METRIC, schema.final_metric("val_acc"))
        return tracker

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if schema.EXPERIMENT_KIND not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, schema.EXPERIMENT_KIND, schema.MODEL_TRAINING)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri, name),
                                                 tags={schema.EXPERIMENT_KIND: schema.MODEL_TRAINING})
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    # -- the parent run ------------------------------------------------------------------------------
    def open_parent(self, run_id: str | None = None, storage_url: str = "") -> str:
        """Reopen the study's parent run (by id, else by tags) or create it; mark it RUNNING."""
        run_id = run_id if run_id and self._exists(run_id) else self._find_parent()
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.parent_tags[schema.OPTUNA_STUDY],
                                         tags={**self.parent_tags, schema.STORAGE: mask_url(storage_url)})
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

    def describe_parent(self, note: str, settings: dict[str, Any] | None = None) -> None:
        """The parent run's description (Markdown) and its settings as params.

        MLflow params are write-once: a setting that changed since (more seeds) keeps its
        first value there; the description always shows the current one.
        """
        old = self.client.get_run(self.parent_id).data.params
        params = [Param(k, _param_str(v)) for k, v in sorted((settings or {}).items())
                  if k not in old or old[k] == _param_str(v)]
        self.client.log_batch(self.parent_id, params=params, tags=[RunTag(schema.NOTE, _clip(note))])

    def set_results(self, markdown: str) -> None:
        """Replace the results section of the parent run's description (the report's table)."""
        note = self.client.get_run(self.parent_id).data.tags.get(schema.NOTE, "")
        head, _, rest = note.partition(schema.RESULTS_HEADING)
        _, heading, settings = rest.partition(schema.SETTINGS_HEADING)
        note = head + schema.RESULTS_HEADING + markdown + heading + settings
        self.client.set_tag(self.parent_id, schema.NOTE, _clip(note))

    def summarize(self, means: dict[str, float], best: str | None) -> None:
        """Per-variant mean objective as parent metrics ``mean/<variant>``, the best variant as a tag."""
        self.log_metrics(self.parent_id, {schema.mean_key(v): m for v, m in means.items()})
        if best:
            self.client.set_tag(self.parent_id, schema.BEST, best)

    def summarize_search(self, number: int, value: float) -> None:
        """A search study's best trial: its objective as the parent metric ``best/<objective>`` (beside the
        per-variant means, which average trials of different sampled settings), its number as a tag."""
        self.log_metrics(self.parent_id, {schema.BEST_PREFIX + self.objective.removeprefix(schema.FINAL): value})
        self.client.set_tag(self.parent_id, schema.BEST_TRIAL, str(number))

    def log_fidelity(self, taus: dict[int, float], lead_epoch: int | None, line: str) -> None:
        """A report's fidelity on the parent run: tau by epoch as one metric series (step = epoch, drawn as a curve),
        the epoch from which the final best leads, and the one-line summary as a tag."""
        now = int(time.time() * 1000)
        metrics = [Metric(schema.FIDELITY_TAU, float(f"{t:.6g}"), now, int(k)) for k, t in taus.items() if math.isfinite(t)]
        if lead_epoch is not None:
            metrics.append(Metric(schema.FIDELITY_LEAD, float(lead_epoch), now, 0))
        self.client.log_batch(self.parent_id, metrics=metrics, tags=[RunTag(schema.FIDELITY, line[:5000])])

    def log_against(self, study: str, tau: float, verdict: str) -> None:
        """A report's comparison with ``study`` on the parent run: its tau as a metric, its verdict as a tag."""
        metric, tag = schema.against_keys(study)
        self.log_metrics(self.parent_id, {metric: tau})
        self.tag(self.parent_id, {tag: verdict})

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a run (the parent or a child), e.g. a race's status and its drops."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifacts(self, paths: list[Path], folder: str) -> None:
        """Upload files to the parent run under ``folder`` (``report/tables``, ``report/plots``)."""
        for path in paths:
            self.client.log_artifact(self.parent_id, str(path), artifact_path=folder)

    # -- child runs ----------------------------------------------------------------------------------
    def start_trial(self, number: int, cell: dict[str, Any], settings: dict[str, Any], label: str,
                    retry_of: str | None = None) -> str:
        """Create the child run of trial ``number`` with its design cell and settings as params; ``retry_of``
        says which failed trial's cell it runs again, and why that one failed."""
        tags = {schema.PARENT_RUN: self.parent_id, schema.ROLE: schema.TRIAL, schema.STUDY: self.parent_tags[schema.STUDY],
                schema.OPTUNA_STUDY: self.parent_tags[schema.OPTUNA_STUDY], schema.TRIAL_NUMBER: str(number),
                schema.STATE: "RUNNING", schema.VARIANT: label, schema.METRIC: self.objective}
        if retry_of:  # also the run's description, where the MLflow UI shows it whole
            tags[schema.RETRY_OF] = retry_of[:5000]
            tags[schema.NOTE] = f"Runs again the cell of {retry_of}"
        name = schema.run_name(cell)
        if schema.is_search(self.parent_tags, {}):  # a search's trials share cell and seed
            name += f" #{number}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {**settings, **cell}
        self.client.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in sorted(params.items())])
        return run.info.run_id

    def log_cost(self, run_id: str, overhead: dict[str, float]) -> None:
        """Per-design constants (params, MACs, FLOPs, sites, overhead %) once, as ``cost.*`` params."""
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in schema.cost_params(overhead).items()])

    def log_dataset(self, run_id: str, name: str, sizes: dict[str, int], meta: dict[str, Any]) -> None:
        """The dataset as an MLflow dataset input: name, split sizes and shape (metadata only, no upload)."""
        profile = json.dumps({**sizes, **meta}, sort_keys=True)
        digest = hashlib.sha1(f"{name}:{profile}".encode()).hexdigest()[:8]
        dataset = Dataset(name=name, digest=digest, source_type="code", source=json.dumps({"dataset": name}),
                          profile=profile)
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])]
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, inputs)
                return
            except MlflowException as exc:
                # MLflow looks the dataset up, then inserts it: a worker that logged the same dataset
                # in between makes the insert break the store's unique key. The failed write was rolled
                # back, and the next attempt finds the other worker's row and only links it to this run.
                # Any other error (a closed run, a store that is down) is raised at once.
                if attempt == 2 or not _unique_key_clash(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def log_epoch(self, run_id: str, values: dict[str, float | None], step: int) -> None:
        """One epoch's metrics (``val/acc``, ``train/loss``, ...) at ``step``."""
        self.log_metrics(run_id, schema.epoch_metrics(values), step=step)

    def log_final(self, run_id: str, values: dict[str, float | None]) -> None:
        """Final values as ``final/<name>``, the objective first and exact (the report replays a race from it, as the
        runner raced on Optuna's value), the others to 6 significant digits."""
        final = {schema.final_metric(k): v for k, v in values.items()}
        ordered = {self.objective: final.pop(self.objective)} if self.objective in final else {}
        self.log_metrics(run_id, {**ordered, **final}, exact=tuple(ordered))

    def log_activations(self, run_id: str, stats, step: int, *, final: bool) -> None:
        """A measurement of ``ablation.site_stats``: its tables as CSV artifacts (``activations/``, or
        ``activations/epoch_<step>/`` for one during training) and its site means as ``act/*`` at ``step``."""
        folder = schema.activations_dir(None if final else step)
        self.client.log_text(run_id, stats.sites.to_csv(index=False), f"{folder}/{schema.SITES_FILE}")
        if not stats.channels.empty:
            self.client.log_text(run_id, stats.channels.to_csv(index=False), f"{folder}/{schema.CHANNELS_FILE}")
        self.log_metrics(run_id, {schema.ACT + k: v for k, v in stats.summary().items()}, step=step)

    def log_state_dict(self, run_id: str, state_dict: dict) -> None:
        """The trained weights as ``model/state_dict.pt`` (``torch.save``), to rebuild and inspect the trial later."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(schema.MODEL_FILE).name
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
            self.client.log_artifact(run_id, str(path), artifact_path=str(Path(schema.MODEL_FILE).parent))

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int | None = None,
                    exact: tuple[str, ...] = ()) -> None:
        """Log finite metrics, at ``step`` (an epoch) or as final values, to 6 significant digits
        (a float32 training loss has no more; the UI shows 0.312542, not 0.31254219412803650), but ``exact``'s."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v) if k in exact else float(f"{float(v):.6g}"), now, step or 0)
                 for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def end_trial(self, run_id: str, state: str, reason: str | None = None) -> None:
        """Close a child run: its status and ``acon.state`` tag mirror the Optuna trial state."""
        tags = [RunTag(schema.STATE, "FAIL" if state == "INTERRUPTED" else state)]
        if reason:
            tags.append(RunTag(schema.FAIL_REASON, reason[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status=schema.run_status(state))

    def fail_if_running(self, run_id: str, reason: str) -> None:
        """Mark a child run FAILED if it still says RUNNING (its worker died or was cut off); the reason is also its
        description, where the MLflow UI shows it whole."""
        if self._exists(run_id) and self.client.get_run(run_id).info.status == "RUNNING":
            self.tag(run_id, {schema.NOTE: f"**Failed by another worker.** {reason[0].upper()}{reason[1:]}."})
            self.end_trial(run_id, "FAIL", reason)

    def warn(self, run_id: str, warning: str) -> None:
        """A child run's warning (``acon.warning``, and a line of its description): something went wrong that did
        not fail the trial."""
        run = self.client.get_run(run_id)
        before = [w for w in (run.data.tags.get(schema.WARNING, ""),) if w]
        note = run.data.tags.get(schema.NOTE, "")
        self.tag(run_id, {schema.WARNING: "\n".join(before + [warning]),
                          schema.NOTE: f"{note}\n\n**Warning:** {warning}".strip()})

    def parent_url(self) -> str:
        """The parent run's address in the MLflow UI, relative to the UI's root. ``workflowType`` opens the
        UI's model-training view (runs, models) instead of its GenAI default (traces, judges, prompts),
        which a fresh browser would show whatever the experiment's kind."""
        return f"#/experiments/{self.experiment_id}/runs/{self.parent_id}?workflowType={schema.UI_WORKFLOW}"

    def _find_parent(self) -> str | None:
        name = self.parent_tags[schema.OPTUNA_STUDY].replace("'", "\\'")
        runs = self.client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                       filter_string=f"tags.`{schema.ROLE}` = '{schema.PARENT}' and "
                                                     f"tags.`{schema.OPTUNA_STUDY}` = '{name}'")
        return runs[0].info.run_id if runs else None

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False


def _unique_key_clash(exc: MlflowException) -> bool:
    """Whether a store write failed on a unique key: SQLite, PostgreSQL and MySQL word it so, in process
    (the SQLAlchemy error is the cause) and through a tracking server (only its message comes back)."""
    if any(type(e).__name__ == "IntegrityError" for e in (exc.__cause__, exc.__context__)):
        return True
    return any(s in str(exc) for s in ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry"))


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go next to the database file, not under the current directory."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # servers and other stores choose their own artifact root
    db = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).as_uri()


def _connect(uri: str, outage_limit: float | str | None = None) -> MlflowClient:
    """A client for ``uri``, checked once with no retries so a dead server fails fast and clearly. On a database
    server it then rides through outages up to ``outage_limit`` (``studies.store.outage``; MLflow retries HTTP itself)."""
    from studies.store.outage import RetryingClient, outage_limit as limit_of

    limit = limit_of(outage_limit)
    # on PostgreSQL a silent network fails a call within the limit, as for the Optuna storage (one engine, one pool)
    target = _with_timeouts(uri, limit) if uri.startswith("postgresql") else uri
    try:
        with _fast_http():
            client = MlflowClient(tracking_uri=target)
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise StorageError(f"cannot reach MLflow tracking store {mask_url(uri)}: {first_line(exc)[:300]}") from exc
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return RetryingClient(client, limit=limit, name=mask_url(uri))
    if uri.startswith(("http://", "https://")):
        _bound_http(limit)
    return client


def _with_timeouts(uri: str, limit: float) -> str:
    """A PostgreSQL URI with libpq's timeouts (``studies.store.storage.postgres_timeouts``) where it sets none."""
    from sqlalchemy.engine import make_url

    from studies.store.storage import postgres_timeouts

    url = make_url(uri)
    extra = {k: str(v) for k, v in postgres_timeouts(limit).items() if k not in url.query}
    return url.update_query_dict(extra).render_as_string(hide_password=False)


def _bound_http(limit: float) -> None:
    """Size MLflow's own HTTP retries from the outage limit, where the user set none: the retries' backoff (2, 4,
    8 ... s) adds up to at most the limit, and a request times out after 30 s (up to MLflow's 120 s for limits
    over 8 min), so a tracking server that stops answering is given up after the limit plus one timeout per
    attempt, not after the defaults' 20 minutes and more."""
    retries, waited = 0, 0.0
    while retries < 7 and waited + 2 ** (retries + 1) <= limit:
        retries, waited = retries + 1, waited + 2 ** (retries + 1)
    for key, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", int(min(120, max(30, limit / (2 * (retries + 1)))))),
                       ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries)):
        if _users_http(key) is None:
            os.environ[key] = str(value)
            os.environ[_OURS] = ",".join(sorted({*os.environ.get(_OURS, "").split(","), key} - {""}))


#: The MLflow HTTP settings in the environment that this toolkit set, not the user (workers inherit both).
_OURS = "ACON_MLFLOW_HTTP_SET"


def _users_http(key: str) -> str | None:
    """The user's own value of an MLflow HTTP setting; None where unset or set by ``_bound_http``."""
    return None if key in os.environ.get(_OURS, "").split(",") else os.environ.get(key)


@contextmanager
def _fast_http() -> Iterator[None]:
    """No retries and a 10 s timeout for the first check of a tracking server, unless the user set their own
    (the limits ``_bound_http`` set for later calls do not count as the user's)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: v for k, v in keys.items() if _users_http(k) is None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _clip(text: str) -> str:
    """A description within MLflow's tag limit, saying so when cut."""
    return text if len(text) <= schema.NOTE_LIMIT else text[:schema.NOTE_LIMIT - 40] + "\n\n_(cut: see report/tables)_"


def _param_str(value: Any) -> str:
    return "-" if value is None else str(value)

