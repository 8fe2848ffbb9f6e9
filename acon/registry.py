"""A small name -> entry registry shared by every concept in the toolkit.

One ``Registry`` per concept (activations, beta generators, placements, models, datasets,
studies). An entry is the registered object plus its metadata (help, and the fields the
registry declares). Unknown names raise a ``KeyError`` that lists the valid choices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
from types import MappingProxyType
from typing import Any, Iterator, Mapping

class ConfigError(ValueError):
    """A bad name, option or value given to the activation package; the message says what is valid.

    The package's own vocabulary: callers that face a user (the toolkit's command line) print it in one line.
    """


class UnknownNameError(KeyError, ConfigError):
    """An unknown registry name; the message lists the sorted valid choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownOptionError(TypeError, ValueError):
    """A keyword a factory does not accept; the message lists the valid options."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: the object it builds, a one-line help, and the registry's metadata fields."""

    name: str
    obj: Any
    help: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def options(self) -> frozenset[str] | None:
        """The keyword options ``obj`` accepts: metadata ``options`` if given, else read from its
        signature (past its first positional parameter); None when it takes any (``**kwargs``)."""
        given = self.meta.get("options")
        return frozenset(given) if given is not None else keyword_options(self.obj)


class Registry:
    """Maps names to entries; usable as ``@reg.register("name")`` or ``reg.register("name", obj)``.

    The registry's ``doc`` says what a registered callable must accept and return; ``meta`` declares
    the metadata fields an entry may carry, with their defaults (``register(name, obj, **meta)``).
    Duplicate names are refused unless ``override=True``.
    """

    def __init__(self, name: str, doc: str = "", *, meta: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.doc = doc
        self.fields = dict(meta or {})
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, help: str | None = None, override: bool = False, **meta: Any):
        """Register ``obj`` under ``name`` with its metadata; without ``obj`` return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, help=help, override=override, **meta)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.name} names must be non-empty strings, got {name!r}")
        if name in self._entries and not override:
            raise ValueError(f"{self.name} {name!r} is already registered; pass override=True to replace it")
        unknown = sorted(set(meta) - set(self.fields))
        if unknown:
            valid = ", ".join(sorted(self.fields)) or "none"
            raise TypeError(f"{self.name} entries take no metadata {', '.join(unknown)}; valid: {valid}")
        self._entries[name] = self._entry(name, obj, help, meta)
        return obj

    def _entry(self, name: str, obj: Any, help: str | None, meta: Mapping[str, Any]) -> Entry:
        fields = MappingProxyType({**self.fields, **meta})
        return Entry(name, obj, help or _first_line(getattr(obj, "__doc__", None)), fields)

    def unregister(self, name: str) -> Entry:
        """Remove ``name`` and return its entry."""
        self.entry(name)
        return self._entries.pop(name)

    @contextlib.contextmanager
    def temporary(self, name: str, obj: Any, **kwargs: Any) -> Iterator[Any]:
        """Register ``obj`` (as ``register`` does) for the ``with`` block only; a replaced entry comes back."""
        previous = self._entries.get(name)
        self.register(name, obj, **kwargs)
        try:
            yield obj
        finally:
            if previous is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = previous

    def entry(self, name: Any) -> Entry:
        """The entry of ``name``; a non-string (a class or callable) gets an unregistered entry."""
        if not isinstance(name, str):
            return self._entry(getattr(name, "__name__", repr(name)), name, None, {})
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: Any) -> Any:
        """Resolve ``name``; a non-string (a class or callable) is passed straight through."""
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown ``name``, with the valid choices."""
        return unknown_choice(self.name, name, self.names())

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def help(self, name: str) -> str:
        """A one-line description of ``name``."""
        return self.entry(name).help

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self)} entries)"


def keyword_options(factory: Any) -> frozenset[str] | None:
    """Keyword parameters of ``factory`` past its first positional one (the channels of an
    activation); None when it takes ``**kwargs`` or has no readable signature."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_options(what: str, options: Mapping[str, Any], accepted: frozenset[str] | None) -> None:
    """Refuse options outside ``accepted`` (None accepts any), naming the valid ones."""
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(sorted(accepted)) or "none"
        raise UnknownOptionError(f"{what} does not accept option {', '.join(map(repr, unknown))}{hint}; valid options: {valid}")


def unknown_choice(what: str, name: str, choices) -> str:
    """``unknown WHAT 'name' (did you mean 'x'?); valid choices: a, b, c``: the one-line error for a name
    that is not one of ``choices``."""
    choices = sorted(map(str, choices))
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid choices: {', '.join(choices)}"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
