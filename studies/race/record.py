"""A race on the record: its plan as an Optuna user attr and a parent-run tag, its state replayed from an Optuna
study, and its drops, status and answer in words (tags, the parent run's description, the report).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Mapping, Sequence

from studies.race.plan import Answer, Drop, RacePlan, Settled, Verdict
from studies.race.procedure import RaceState, race
from studies.store import attrs



def race_state(study) -> RaceState | None:
    """A raced Optuna study's state, replayed from its finished trials; None for a study that is not raced.
    Trials are read by their user attrs ``variant`` and ``seed``; queue races (``spurious``) are left out."""
    from optuna.trial import TrialState

    recorded = study.user_attrs.get(attrs.RACE)
    if recorded is None:
        return None
    plan, designs, baseline = unpack(recorded)
    done: dict[str, set[int]] = {}
    values: dict[str, dict[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if attrs.is_spurious(t) or attrs.VARIANT not in t.user_attrs:
            continue
        label, seed = t.user_attrs[attrs.VARIANT], int(t.user_attrs[attrs.SEED])
        done.setdefault(label, set()).add(seed)
        if t.state == TrialState.COMPLETE and t.value is not None:
            values.setdefault(label, {})[seed] = float(t.value)
    return race(designs, done, values, plan, baseline)


RACE_TAG = "acon.race"  # the parent run's record of a race: its plan, designs and baseline (JSON)
DROPPED_TAG = "acon.race.dropped"  # on a dropped design's child runs; on the parent, one per design (+ ".<label>")
STATUS_TAG = "acon.race.status"


def plan_tags(plan: RacePlan, designs: Sequence[str], baseline: str | None) -> dict[str, str]:
    """The parent-run tag that lets anyone replay the race: plan, designs in order, baseline."""
    return {RACE_TAG: json.dumps(record(plan, designs, baseline))}


def record(plan: RacePlan, designs: Sequence[str], baseline: str | None) -> dict[str, Any]:
    """A race as plain data (an Optuna user attr, a tag): its plan, its designs in order, its baseline."""
    return {**asdict(plan), "designs": list(designs), "baseline": baseline}


def unpack(data: Mapping[str, Any]) -> tuple[RacePlan, list[str], str | None]:
    """(plan, designs, baseline) from ``record``'s data."""
    plan = {k: v for k, v in data.items() if k not in ("designs", "baseline")}
    return RacePlan(**plan), list(data.get("designs", [])), data.get("baseline")


def plan_from_tags(tags: Mapping[str, str]) -> tuple[RacePlan | None, list[str], str | None]:
    """(plan, designs, baseline) from a parent run's tags; (None, [], None) for a study that was not raced."""
    if RACE_TAG not in tags:
        return None, [], None
    return unpack(json.loads(tags[RACE_TAG]))


def describe_drop(drop: Drop) -> str:
    """``round 2 (4 seeds): p=0.0011 vs acon_c/all, mean difference -4.1``: a tag's text."""
    return (f"round {drop.round} ({drop.seeds} seeds): p={drop.p:.2g} vs {drop.lost_to}, "
            f"mean difference {drop.delta:+.4g}")


def describe_state(state: RaceState) -> str:
    """The parent run's race status in a line."""
    if state.finished:
        return f"finished after round {len(state.rounds)}: {state.reason}"
    return f"round {state.round}: {len(state.alive)} designs to {state.seeds} seeds each"


ANSWER_TAG = "acon.race.answer"  # the parent run's race answer in a line (``describe_answer``)


def describe_settled(look: Settled) -> str:
    """``acon_c/all: settled in round 2 (4 seeds; p=0.31, conditional power 0.08)``, or, for a contest still open
    at the end, ``undecided after 8 seeds (p=0.21)``."""
    if look.power == look.power:  # not NaN: settled for futility
        return (f"settled in round {look.round} ({look.seeds} seeds; p={look.p:.2g}, conditional power "
                f"{look.power:.2f}, mean difference {look.delta:+.3g})")
    return f"undecided after {look.seeds} seeds (p={look.p:.2g}, mean difference {look.delta:+.3g})"


def describe_verdict(verdict: Verdict) -> str:
    """``round 4 (6 seeds): p=0.00041 < 0.0021, mean difference +4.1``."""
    return (f"round {verdict.round} ({verdict.seeds} seeds): p={verdict.p:.2g} < {verdict.level:.2g}, "
            f"mean difference {verdict.delta:+.3g}")


def describe_answer(answer: Answer, short=lambda d: d) -> list[str]:
    """The race's answer in lines: the best, the designs tied with it within the budget, and the designs better
    or worse than the baseline, each with its p and seeds. ``short`` shortens a design's label."""
    if answer.best is None:
        return ["no round finished yet"]
    lines = [f"best: {short(answer.best)}"]
    if answer.tied:
        lines.append("tied with it within the budget: " + "; ".join(
            f"{short(t.design)} ({describe_settled(t)})" for t in answer.tied))
    if answer.baseline is not None:
        for word, verdicts in (("better", answer.better), ("worse", answer.worse)):
            listed = "; ".join(f"{short(v.design)} ({describe_verdict(v)})" for v in verdicts) or "none"
            lines.append(f"{word} than {short(answer.baseline)}: {listed}")
    return lines
