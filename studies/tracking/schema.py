"""The tracking layout, defined once: MLflow tags, params, metrics, run statuses and artifact folders.

``studies.tracking.writer`` (the one writer) writes it, ``report.collect`` reads it and
``benchmarks/synthetic.py`` fakes it in bulk; no other module spells these names.
"""
from __future__ import annotations

import math
import re
from typing import Any

# Experiment tag: MLflow 3's UI opens a "model training" experiment on its runs table, not the GenAI overview.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# The UI's sidebar follows its own switch (browser storage, GenAI by default), which a URL parameter sets.
UI_WORKFLOW = "machine_learning"

# Tags of the parent run (one per Optuna study) and the child runs (one per trial).
ROLE, PARENT, TRIAL = "acon.role", "parent", "trial"
STUDY, PRESET, OPTUNA_STUDY, STORAGE = "acon.study", "acon.preset", "optuna.study_name", "acon.storage"
AXES, METRIC, DIRECTION, BEST = "acon.axes", "acon.metric", "acon.direction", "acon.best_variant"
SAMPLER, GRID = "acon.sampler", "grid"  # a grid runs each design cell once per seed; a search samples settings
TRIAL_NUMBER, STATE, VARIANT, FAIL_REASON = "optuna.trial_number", "acon.state", "acon.variant", "acon.fail_reason"
# a cell run again after its trial failed, and a result that came after its trial was failed by others
RETRY_OF, LATE_RESULT = "acon.retry_of", "acon.late_result"
# what went wrong without failing the trial (its site statistics could not be measured), and what the build left
WARNING, UNREPLACED = "acon.warning", "acon.unreplaced_calls"
PARENT_RUN, NOTE = "mlflow.parentRunId", "mlflow.note.content"  # MLflow's own: nesting and the description

# Optuna state <-> MLflow run status. INTERRUPTED is our name for a FAIL caused by Ctrl-C/SIGTERM.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED",
              "RUNNING": "RUNNING"}
TRIAL_STATE = {"FINISHED": "COMPLETE", "KILLED": "PRUNED", "FAILED": "FAIL", "RUNNING": "RUNNING"}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")

# Metrics: per epoch (step = epoch) in sections MLflow draws by prefix; final values under "final/".
EPOCH_METRICS = {"train_loss": "train/loss", "lr": "train/lr", "val_loss": "val/loss", "val_acc": "val/acc",
                 "val_top5": "val/top5", "epoch_time_s": "time/epoch_s", "images_per_s": "time/images_per_s"}
FINAL = "final/"
# Per-design constants, logged once as params "cost.<name>" (not metric series).
COST = "cost."
COST_KEYS = ("params", "params_extra", "params_extra_pct", "macs", "elementwise_ops", "flops", "flops_extra_pct",
             "sites")
SEED = "seed"
# The axes of a design cell (studies.spec): with the seed, a grid trial's Optuna params and its run's identity.
# ``options``: the activation's other keyword options as one canonical string, "k=3" (studies.design_options).
OPTIONS = "options"
DESIGN_AXES = ("activation", "generator", "r", "placement", "gate", OPTIONS)
CELL_PARAMS = DESIGN_AXES + (SEED,)
#: Axes added after studies had been run: left out of a cell's key where they do not apply, so those keys stay.
LATER_AXES = (OPTIONS,)
# The parent run's per-variant summary: metric "mean/<variant>" (the objective's mean over seeds).
MEAN = "mean/"
BEST_PREFIX, BEST_TRIAL = "best/", "acon.best_trial"  # a search's best trial: its objective and number

# The parent run's description: question, results (run summary, then the report's table), settings.
RESULTS_HEADING, SETTINGS_HEADING = "\n\n## Results\n\n", "\n\n## Settings\n\n"
NOTE_LIMIT = 7900  # MLflow keeps tag values up to 8,000 characters

# What each activation site learned (ablation.site_stats), per child run: the tables as artifacts (after training;
# every K epochs under activations/epoch_K/), site means as metrics at the epoch measured, the weights on request.
ACTIVATIONS_DIR = "activations"
SITES_FILE, CHANNELS_FILE = "sites.csv", "channels.csv"
ACT = "act/"  # act/beta_mean, act/linear_fraction: means over the ACON sites
MODEL_FILE = "model/state_dict.pt"

# The report's rank checks on the parent run (report.fidelity, report.against): Kendall's tau of each epoch's ranking
# with the final one (step = epoch), the epoch from which the final best leads, and the tau of the ranking against
# another study; each check's one-line summary as a tag.
FIDELITY_TAU, FIDELITY_LEAD, FIDELITY = "fidelity/tau", "fidelity/lead_epoch", "acon.fidelity"
AGAINST = "against"

# Artifacts of the parent run.
TABLES_DIR, PLOTS_DIR = "report/tables", "report/plots"

# The Optuna attrs that link to MLflow (parent and child run ids) and record a failure: ``studies.store.attrs``.


def activations_dir(epoch: int | None = None) -> str:
    """The artifact folder of a child run's activation tables: after training, or at ``epoch``."""
    return ACTIVATIONS_DIR if epoch is None else f"{ACTIVATIONS_DIR}/epoch_{epoch}"


def run_status(state: str) -> str:
    """The MLflow run status of an Optuna trial state (COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED)."""
    return RUN_STATUS[state]


def trial_state(status: str, tag: str | None = None) -> str:
    """The trial state a child run stands for: its ``acon.state`` tag, else derived from its status."""
    return tag or TRIAL_STATE.get(status, "RUNNING")


def epoch_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch values keyed as logged (``val_acc`` -> ``val/acc``); other ``train_``, ``val_`` and ``test_`` names
    go to their section too (``val_f1`` -> ``val/f1``, a custom loop's), the rest keep theirs."""
    return {EPOCH_METRICS.get(k) or _section(k): v for k, v in values.items()}


def _section(name: str) -> str:
    head, _, rest = name.partition("_")
    return f"{head}/{rest}" if head in ("train", "val", "test") and rest else name


def final_metric(name: str) -> str:
    """The key of a final value: ``val_acc`` -> ``final/val_acc``."""
    return name if name.startswith(FINAL) else FINAL + name


def metric_key(name: str) -> str:
    """The key a report reads for ``name``: a final value (``val_acc``, ``val/acc``, ``final_val_acc`` alike)."""
    inverse = {v: k for k, v in EPOCH_METRICS.items()}
    name = inverse.get(name, name)
    return final_metric(name.removeprefix("final_") if name.startswith("final_") else name)


def epoch_key(metric: str) -> str:
    """The per-epoch key behind a metric or objective: ``final/val_acc`` or ``val_acc`` -> ``val/acc``."""
    name = metric.removeprefix(FINAL)
    return EPOCH_METRICS.get(name, name)


def cost_params(overhead: dict[str, float]) -> dict[str, str]:
    """Complexity counts as params ``cost.*``: integers as integers, percentages to 2 decimals."""
    out = {}
    for key in COST_KEYS:
        value = overhead.get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[COST + key] = f"{value:.2f}" if key.endswith("_pct") else str(int(round(value)))
    return out


def variant_parts(cell: dict[str, Any], *, all_placement: bool = True) -> list[str]:
    """The values of the design axes that apply to a cell, in axis order (``-``: does not apply; r as ``r8``).

    ``all_placement=False`` leaves out the default placement ``all``."""
    parts = [str(cell["activation"])]
    for axis in DESIGN_AXES[1:]:
        value = cell.get(axis, "-")
        if value == "-" or (axis == "placement" and value == "all" and not all_placement):
            continue
        parts.append(f"r{value}" if axis == "r" else str(value))
    return parts


def axis_name(cell: dict[str, Any]) -> str:
    """A variant in a narrow column: the values of the axes that apply, ``meta_acon·channel·r8``."""
    return "·".join(variant_parts(cell, all_placement=False))


def run_name(cell: dict[str, Any]) -> str:
    """A child run's name, variant and seed first: ``meta_acon·channel·r8 s1``."""
    return f"{axis_name(cell)} s{cell[SEED]}"


def mean_key(variant: str) -> str:
    """The parent-run metric holding a variant's mean objective: ``/`` and ``·`` as ``.``, and what else an MLflow
    key cannot hold (an options axis's ``=`` and ``,``) as ``_``: ``mean/dy_relu_b.r4.all.k_3``."""
    return MEAN + re.sub(r"[^\w.\- :]", "_", variant.replace("/", ".").replace("·", "."))


def against_keys(study: str) -> tuple[str, str]:
    """The parent-run metric and tag of a comparison with ``study``: ``against/<study>/tau``, ``acon.against.<study>``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study)
    return f"{AGAINST}/{safe}/tau", f"acon.{AGAINST}.{safe}"


def is_search(parent_tags: dict[str, str], parent_params: dict[str, str]) -> bool:
    """Whether a study's trials sample their settings (TPE, random) rather than run grid cells: then two
    trials of one design and seed are two trials, not a duplicate. Parent runs from before the sampler
    tag say it by their ``n_trials`` setting, which only a search has."""
    if SAMPLER in parent_tags:
        return parent_tags[SAMPLER] != GRID
    return parent_params.get("n_trials", "-") not in ("-", "", "None")
