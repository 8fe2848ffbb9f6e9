"""A small name -> callable registry shared by every concept in the toolkit.

One ``Registry`` per concept (activations, beta generators, placements, models,
datasets, studies). Unknown names raise a ``KeyError`` that lists the valid choices.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from acon.errors import UserError


class UnknownNameError(KeyError, UserError):
    """An unknown registry name; the message lists the sorted valid choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry:
    """Maps names to callables; usable as ``@reg.register("name")`` or ``reg.register("name", obj)``.

    The registry's ``doc`` says what a registered callable must accept and return.
    Duplicate names are refused unless ``override=True``.
    """

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.doc = doc
        self._items: dict[str, Any] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, help: str | None = None, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, help=help, override=override)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.name} names must be non-empty strings, got {name!r}")
        if name in self._items and not override:
            raise ValueError(f"{self.name} {name!r} is already registered; pass override=True to replace it")
        self._items[name] = obj
        self._help[name] = help or _first_line(getattr(obj, "__doc__", None))
        return obj

    def get(self, name: Any) -> Any:
        """Resolve ``name``; a non-string (a class or callable) is passed straight through."""
        if not isinstance(name, str):
            return name
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown ``name``, with the valid choices."""
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.name} {name!r}{hint}; valid choices: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def help(self, name: str) -> str:
        """A one-line description of ``name``."""
        self.get(name)
        return self._help[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self)} entries)"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


Factory = Callable[..., Any]
