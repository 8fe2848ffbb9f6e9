"""Placement policies: which activation call sites of a model get the new activation.

A policy is ``policy(sites, arg) -> list[Site]``: it receives every candidate site (execution
order) and the text after ``:`` in its name (``"first:4"`` -> ``"4"``; None without one).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Sequence

from acon.registry import Registry
from ablation.sites import Site

PLACEMENTS = Registry(
    "placement policy",
    doc="policy(sites: list[Site], arg: str | None) -> list[Site], a subset of sites; "
    "'name:arg' passes arg (None when there is no ':'). Metadata: arg, how its argument is written "
    "in messages ('K', 'I', 'PATTERN'); None: it takes none.",
    meta={"arg": None},
)

#: ``register_policy(name, policy=None, *, arg=None, help=None, override=False)``; usable as a decorator.
register_policy = PLACEMENTS.register


def parse_placement(spec: Any) -> tuple[Callable, str | None]:
    """Split ``"name:arg"`` and resolve the policy; a callable is passed straight through."""
    if not isinstance(spec, str):
        return spec, None
    name, sep, arg = spec.partition(":")
    entry = PLACEMENTS.entry(name)
    letter = entry.meta["arg"]
    if letter is not None and not sep:
        raise ValueError(f"placement {name}:{letter} needs its {letter}, e.g. '{name}:{_example(name)}'")
    if letter is None and sep:
        raise ValueError(f"placement {name!r} takes no parameter, got {spec!r}")
    return entry.obj, (arg if sep else None)


def select_sites(spec: Any, sites: Sequence[Site]) -> list[Site]:
    """The sites that placement ``spec`` picks, in execution order."""
    policy, arg = parse_placement(spec)
    chosen = {s.index for s in policy(list(sites), arg)}
    return [s for s in sites if s.index in chosen]


def _example(name: str) -> str:
    return {"glob": "layer4.*"}.get(name, "2")


def _positive_int(name: str, letter: str, arg: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        value = 0
    if value < 1 or str(value) != arg.strip():
        raise ValueError(f"{name}:{letter} needs a positive integer {letter}, got {arg!r}")
    return value


@register_policy("all", help="every activation call site (the model's own activations, never gates)")
def _all(sites: list[Site], arg: None) -> list[Site]:
    return sites


@register_policy("none", help="no site: the baseline model")
def _none(sites: list[Site], arg: None) -> list[Site]:
    return []


@register_policy("bottleneck_3x3", help="the paper's ResNet rule: the activation after bn2 (the 3x3 conv) of each Bottleneck")
def _bottleneck_3x3(sites: list[Site], arg: None) -> list[Site]:
    return [s for s in sites if s.block_type == "Bottleneck" and s.source == f"{s.block}.bn2"]


@register_policy("last_stage", help="sites of the last stage")
def _last_stage(sites: list[Site], arg: None) -> list[Site]:
    last = max((s.stage for s in sites), default=None)
    return [s for s in sites if s.stage == last]


@register_policy("first", arg="K", help="the first K sites in execution order")
def _first(sites: list[Site], arg: str) -> list[Site]:
    return sites[: _positive_int("first", "K", arg)]


@register_policy("last", arg="K", help="the last K sites in execution order")
def _last(sites: list[Site], arg: str) -> list[Site]:
    return sites[-_positive_int("last", "K", arg):]


@register_policy("stage", arg="I", help="sites of stage I (0 = stem; see ablation.sites.assign_stages)")
def _stage(sites: list[Site], arg: str) -> list[Site]:
    if not arg.strip().isdigit():
        raise ValueError(f"stage:I needs a non-negative integer I, got {arg!r}")
    return [s for s in sites if s.stage == int(arg)]


@register_policy("glob", arg="PATTERN", help="sites whose module path matches an fnmatch PATTERN (with or without '#k')")
def _glob(sites: list[Site], arg: str) -> list[Site]:
    if not arg:
        raise ValueError("glob:PATTERN needs a non-empty PATTERN, e.g. 'glob:layer4.*'")
    return [s for s in sites if fnmatch.fnmatchcase(s.path, arg) or fnmatch.fnmatchcase(s.path.split("#")[0], arg)]
