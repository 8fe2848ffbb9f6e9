"""Beta generators seen from the design space: which options a generator takes, and its cost.

The registry (``GENERATORS``: name -> meta-ACON builder, options, analytic cost) lives in
``acon.generators``; this module is the design space's access to it.
"""
from __future__ import annotations

from typing import Any

from acon.generators import GENERATORS, generator_complexity, generator_entry, register_generator

__all__ = ["GENERATORS", "generator_complexity", "get_generator", "register_generator", "takes_option"]


def get_generator(name: Any) -> Any:
    """Resolve a generator name to its builder; a class or callable is passed straight through."""
    return GENERATORS.get(name)


def takes_option(generator: Any, option: str) -> bool:
    """Whether meta-ACON with ``generator`` accepts ``option`` (e.g. ``"r"``), from the entry's metadata."""
    options = generator_entry(generator).options
    return options is None or option in options
