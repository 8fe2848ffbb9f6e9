"""One Optuna trial: build the cell's model, measure its overhead, train, record everything.

``execute_trial`` reads as the story of a trial: design cell -> model -> complexity ->
training with per-epoch reports and pruning -> final metrics -> trial and run closed.
"""
from __future__ import annotations

import dataclasses
import threading
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from studies.errors import USER_ERRORS, UserError, first_line
from studies.run.build import build_variant, train_config
from studies.run.cells import cell_attrs, suggest_cell
from studies.run.context import RunContext
from studies.run.interrupt import Interrupted, check
from studies.run.queue import why_failed
from studies.tracking.summary import fail_reason
from studies.settings import Settings
from studies.spec import design_cell, variant_label
from studies.store import attrs
from studies.store.outage import StorageDown, StorageUnavailable, say
from studies.store.storage import deferring, heartbeat_interval, record_heartbeat
from studies.tracking import schema

class StudyCodeError(UserError):
    """A user error in a trial (the study's own loop or factory, a model it cannot build): every cell would hit it,
    so the run stops at the first, with the trial recorded as failed; a rerun after the fix resumes."""


class TakenOver(Exception):
    """This trial was failed by another process (its heartbeat went stale) while it was still training."""

    def __init__(self, value: float, epoch: int):
        super().__init__(f"taken over at epoch {epoch}")
        self.value, self.epoch = value, epoch


def execute_trial(ctx: RunContext, trial: optuna.Trial) -> TrialState:
    """Run one trial to a final state (COMPLETE, PRUNED or FAIL); re-raise interruptions and user errors."""
    try:
        cell, settings = _design(ctx, trial)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale between ask() and its first write
        say(f"trial #{trial.number}: failed by another process before it started ({why_failed(ctx.study, trial.number)}); "
            f"stepping over it, its cell is queued again")
        return TrialState.FAIL
    label = variant_label(cell)
    logged = settings.logged()
    run_id = ctx.tracker.start_trial(trial.number, cell, logged, label, retry_of=_retry_of(ctx.study, trial))
    reports = _Reports(ctx.study, trial)
    with _heartbeat(ctx.study, trial):  # until the result is told: it may wait for the storage to come back
        try:
            trial.set_user_attr(attrs.RUN_ID, run_id)
            value = _train_and_log(ctx, trial, cell, settings, run_id, label, reports)
        except optuna.TrialPruned:
            return _record(ctx, trial, run_id, reports, TrialState.PRUNED)
        except TakenOver as exc:  # the result is late: stop now, the cell runs again elsewhere
            _late(ctx, trial, run_id, TrialState.COMPLETE, exc.value, epoch=exc.epoch)
            return TrialState.FAIL
        except (KeyboardInterrupt, SystemExit, Interrupted) as exc:
            _fail(ctx, trial, run_id, f"interrupted ({exc or type(exc).__name__})", state="INTERRUPTED")
            raise
        except StorageUnavailable as exc:
            ctx.tracker.end_trial(run_id, "FAIL", f"not recorded: {exc}")
            raise
        except USER_ERRORS as exc:  # every cell would fail the same way: stop, a rerun after the fix resumes
            _fail(ctx, trial, run_id, f"{type(exc).__name__}: {exc}", user_error=True)
            raise StudyCodeError(f"trial #{trial.number} ({schema.run_name(cell)}) stopped the run: {exc}; fix it, "
                                 f"then rerun the same command: the study resumes where it stopped") from exc
        except Exception as exc:  # a failed trial is recorded, the study goes on
            _fail(ctx, trial, run_id, _reason(exc))
            return TrialState.FAIL
        return _record(ctx, trial, run_id, reports, TrialState.COMPLETE, value)


def _retry_of(study: optuna.Study, trial: optuna.Trial) -> str | None:
    """``trial #7 (why it failed)`` for a cell queued again after its trial failed, else None."""
    number = trial.user_attrs.get(attrs.RETRY_OF)
    if number is None:
        return None
    return f"trial #{number} ({why_failed(study, number)})"


def _record(ctx: RunContext, trial: optuna.Trial, run_id: str, reports: "_Reports", state: TrialState,
            value: float | None = None) -> TrialState:
    """Tell Optuna the trial's result (waiting through a storage outage), then close its run.

    A result that arrives after another process failed the trial (its heartbeat went stale while this worker
    was cut off from the storage) is late: Optuna keeps the trial FAIL and its cell was queued again, so the
    result stays out of the counts, and both MLflow runs say what happened.
    """
    try:
        reports.flush()
        ctx.study.tell(trial, value, state=state)
    except StorageUnavailable as exc:
        ctx.tracker.end_trial(run_id, "FAIL", f"{state.name} but not recorded: {exc}")
        raise
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not _finished_elsewhere(ctx.study, trial):
            raise
        _late(ctx, trial, run_id, state, value)
        return TrialState.FAIL
    ctx.tracker.end_trial(run_id, state.name)
    return state


def _finished_elsewhere(study: optuna.Study, trial: optuna.Trial) -> bool:
    return study.get_trials(deepcopy=False)[trial.number].state.is_finished()


def _late(ctx: RunContext, trial: optuna.Trial, run_id: str, state: TrialState, value: float | None,
          epoch: int | None = None) -> None:
    """Both runs of a cell whose first trial's result came late: the late one, and the rerun of its cell.
    ``epoch``: the trial learned it was taken over while training, at that epoch's report, and stopped there."""
    trials = ctx.study.get_trials(deepcopy=False)
    mine = trials[trial.number]
    key = attrs.key_of(mine)
    reruns = [t for t in trials if t.number > trial.number and key is not None and attrs.key_of(t) == key
              and not attrs.is_spurious(t)]
    result = f"{ctx.spec.metric}={value:.4g}" if value is not None else state.name
    if epoch is not None:
        result += f" at epoch {epoch}"
    why = fail_reason(mine)
    where = f"its cell was queued again as trial #{reruns[0].number}" if reruns else "its cell is queued again"
    stopped = "; training stopped there" if epoch is not None else ""
    note = f"late result: {result} arrived after this trial was failed ({why}); not counted, {where}{stopped}"
    say(f"trial #{trial.number}: {note}")
    ctx.tracker.end_trial(run_id, "FAIL", note)
    ctx.tracker.tag(run_id, {schema.LATE_RESULT: result, schema.NOTE: f"**Not counted.** {note[0].upper()}{note[1:]}."})
    for t in reruns:
        rerun_id = t.user_attrs.get(attrs.RUN_ID)
        if rerun_id:
            retry = f"trial #{trial.number}, whose worker lost the storage; its late result {result} arrived and is not counted"
            ctx.tracker.tag(rerun_id, {schema.RETRY_OF: retry, schema.NOTE: f"Runs again the cell of {retry}."})


class _Reports:
    """A trial's epoch results for Optuna. During a storage outage they are held back (training goes on and no
    pruning is decided); the next epoch after it, or the end of the trial, writes them."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        self.study, self.trial, self.pending = study, trial, []

    def add(self, value: float, epoch: int) -> bool:
        """Report an epoch; True if it reached the storage (pruning may then be asked). Raises ``TakenOver`` when
        another process failed the trial meanwhile (this worker was cut off longer than the heartbeat grace)."""
        self.pending.append((value, epoch))
        try:
            with deferring(self.study):
                self.flush()
                return self.trial.should_prune()
        except StorageDown:
            return False
        except optuna.exceptions.UpdateFinishedTrialError:
            if not _finished_elsewhere(self.study, self.trial):
                raise
            raise TakenOver(value, epoch) from None

    def flush(self) -> None:
        while self.pending:
            value, epoch = self.pending[0]
            self.trial.report(value, epoch)
            self.pending.pop(0)


def _design(ctx: RunContext, trial: optuna.Trial) -> tuple[dict[str, Any], Settings]:
    """The trial's design cell and settings: the enqueued Optuna params (grid) or the search space (TPE)."""
    settings = ctx.settings
    if ctx.spec.is_grid:
        cell = suggest_cell(trial, ctx.spec.cells(settings))
    else:
        cell = {**design_cell(ctx.spec.designs[0]), "seed": trial.number % int(settings["seeds"])}
        settings = settings.replace(**ctx.spec.search_space(trial))
        for k, v in cell_attrs(cell).items():
            trial.set_user_attr(k, v)
    return cell, settings


def _train_and_log(ctx: RunContext, trial: optuna.Trial, cell: dict[str, Any], settings: dict[str, Any],
                   run_id: str, label: str, reports: _Reports) -> float:
    from studies.training.loop import train

    data = ctx.data()
    model, sites = build_variant(cell, settings, data)
    _record_unreplaced(ctx, run_id, sites)
    shape = [data.in_channels, data.image_size, data.image_size]
    ctx.tracker.log_dataset(run_id, data.name, data.sizes(), {"classes": data.num_classes, "shape": shape})
    ctx.tracker.log_cost(run_id, ctx.overhead(label, model, sites, settings, data))
    cfg = train_config(settings, seed=int(cell["seed"]), device=ctx.options.device, threads=ctx.options.threads)
    metric = ctx.spec.metric

    def report(epoch: int, values: dict[str, Any]) -> None:
        """One epoch, whichever loop trained it: logged, shown, reported to Optuna, pruned, measured."""
        first = {metric: values[metric]} if metric in values else {}  # the objective first
        ctx.tracker.log_epoch(run_id, {**first, **values}, step=epoch)
        if ctx.bar is not None:
            ctx.bar.set_postfix_str(f"{schema.run_name(cell)} e{epoch}/{cfg.epochs} {_short(metric, values)}")
        # an epoch without the objective (a custom loop's choice) is logged, not reported
        if metric in values and reports.add(values[metric], epoch):
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        every = settings["act_every"]
        if every and epoch % every == 0 and epoch < cfg.epochs:
            _record_activations(ctx, run_id, model, sites, settings, data, epoch, final=False, label=label)

    if ctx.spec.train is not None:
        final, epochs = _custom_loop(ctx, model, data, settings, cell, cfg, report)
    else:
        def on_epoch(m) -> None:
            values = dataclasses.asdict(m)
            report(values.pop("epoch"), values)

        result = train(model, data, cfg, on_epoch=on_epoch, progress=check)  # check: stop at a step on Ctrl-C
        final = {**result.final, "best_val_acc": max(h.val_acc for h in result.history)}
        epochs = len(result.history)
    ctx.tracker.log_final(run_id, final)
    _record_activations(ctx, run_id, model, sites, settings, data, epochs, final=True, label=label)
    if settings["save_model"]:
        ctx.tracker.log_state_dict(run_id, model.state_dict())
    return float(final[metric])


def _record_unreplaced(ctx: RunContext, run_id: str, sites) -> None:
    """Activation calls the surgery could not replace (inside blocks fx cannot enter): their count on the run
    (``acon.unreplaced_calls``) and where they are, as a warning; the build already said so in one line."""
    from ablation.sites import unreplaced_summary

    note = unreplaced_summary(sites)
    if note:
        ctx.tracker.tag(run_id, {schema.UNREPLACED: str(len(sites.unreplaced))})
        ctx.tracker.warn(run_id, note)


def _custom_loop(ctx: RunContext, model, data, settings, cell: dict[str, Any], cfg, report) -> tuple[dict, int]:
    """Train with the study's own loop: (its final metrics, the epochs it logged)."""
    from studies.run.custom_loop import TrialTracker, final_value, resolve_train
    from studies.training.loop import resolve_device

    fn = resolve_train(ctx.spec.train)
    device = str(resolve_device(cfg.device))
    tracker = TrialTracker(report, seed=int(cell["seed"]), device=device, cell=cell, epochs=cfg.epochs)
    final = fn(model, data, settings, tracker)
    check()  # the loop returned because of Ctrl-C or SIGTERM: the trial is interrupted, not complete
    final_value(final, ctx.spec.metric, fn)
    return dict(final), tracker.logged


def _record_activations(ctx: RunContext, run_id: str, model, sites: list, settings: dict[str, Any], data,
                        epoch: int, *, final: bool, label: str) -> None:
    """What each activation site learned, on held-out images (``act_images``; 0: not measured)."""
    if not settings["act_images"]:
        return
    from studies.training.held_out import measure_held_out

    try:
        stats = measure_held_out(model, data, images=settings["act_images"], batch_size=settings["eval_batch_size"],
                                 sites=sites)
    except Exception as exc:  # a statistic must never cost a trained trial its result: warn on the run, go on
        warning = f"site statistics not measured at epoch {epoch}: {type(exc).__name__}: {first_line(exc)}"
        say(f"{label}: {warning}; the trial goes on (the warning is on its MLflow run)")
        ctx.tracker.warn(run_id, warning)
        return
    ctx.tracker.log_activations(run_id, stats, epoch, final=final)


def _short(metric: str, values: dict[str, Any]) -> str:
    """The objective for a progress bar: accuracy in percent (as ``report`` shows it)."""
    value = values.get(metric)
    if value is None:
        return ""
    return f"{100 * value:.1f}%" if "acc" in metric or "top" in metric else f"{value:.4g}"


def _fail(ctx: RunContext, trial: optuna.Trial, run_id: str, reason: str, *, state: str = "FAIL",
          user_error: bool = False) -> None:
    try:
        trial.set_user_attr(attrs.FAIL_REASON, reason[:1000])
        if user_error:
            trial.set_user_attr(attrs.USER_ERROR, True)
        ctx.study.tell(trial, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not _finished_elsewhere(ctx.study, trial):  # failed meanwhile by another process: FAIL all the same
            raise
    finally:
        ctx.tracker.end_trial(run_id, state, reason)


def _reason(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
    return f"{type(exc).__name__}: {exc}\n{tail}"


@contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record heartbeats while the trial runs (RDB storages), as ``study.optimize`` would."""
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                record_heartbeat(study, trial)
            except Exception:  # a transient storage error must not kill the trial
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval)  # a beat waiting for the storage to come back is not waited for
