"""A model by import path: ``mynets.py:make_net`` (a file) or ``mypkg.models:make_net`` (a module).

The factory is called with the keywords it declares among ``num_classes``, ``in_channels``, ``small_input`` and
``input_size`` (at least the first two); nothing is registered. ``make_net.input_size = 32`` sets the side used
for shape propagation when none is given (default 224). Every mistake is one ``ConfigError`` line.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

from torch import nn

from acon.registry import ConfigError
from acon.registry import Entry
from ablation.surgery import declares_keyword

_PASSED = ("num_classes", "in_channels", "small_input", "input_size")


def is_import_path(name: Any) -> bool:
    """Whether ``name`` reads as ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``."""
    if not isinstance(name, str) or name.count(":") != 1:
        return False
    where, attr = name.split(":")
    return bool(where) and attr.isidentifier()


def load_attribute(name: str, what: str = "model") -> Callable:
    """The function an import path names (``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``), or one ``ConfigError`` line."""
    where, attr = name.split(":")
    module = _load(where, name, what)
    found = getattr(module, attr, None)
    if not callable(found):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{what} {name!r}: {where} has no function {attr!r}; its functions: {', '.join(names) or 'none'}")
    return found


def path_entry(name: str) -> Entry:
    """A model-registry entry for an import path: the factory, called with the keywords it declares."""
    factory = load_attribute(name)
    declared = _declared(factory)
    missing = [k for k in ("num_classes", "in_channels") if k not in declared]
    if missing and declared is not None:
        raise ConfigError(f"model factory {name!r} must take keyword arguments num_classes and in_channels "
                        f"(it lacks {', '.join(missing)})")
    return Entry(name, _call(name, factory, declared), inspect.getdoc(factory) or f"{name} (by import path)",
                 {"input_size": int(getattr(factory, "input_size", 224)), "native_small": False})


def _load(where: str, name: str, what: str):
    """The module of ``where``: a ``.py`` file (relative to the working directory) or an importable module."""
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ConfigError(f"{what} {name!r}: no file {where} (from {os.getcwd()})")
        key = f"acon_user_model_{abs(hash(path))}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[key]
            raise ConfigError(f"{what} {name!r}: importing {where} failed: {type(e).__name__}: {_first(e)}") from e
        return module
    try:
        return importlib.import_module(where)
    except Exception as e:
        raise ConfigError(f"{what} {name!r}: cannot import {where}: {type(e).__name__}: {_first(e)}") from e


def _declared(factory: Callable) -> set[str] | None:
    """The keywords among ``_PASSED`` that ``factory`` names (a bare ``**kwargs`` names none: it may forward them to a
    constructor that takes none of them); None when its signature cannot be read (it gets them all)."""
    try:
        inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    return {k for k in _PASSED if declares_keyword(factory, k)}


def _call(name: str, factory: Callable, declared: set[str] | None) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        given = {k: v for k, v in kwargs.items() if declared is None or k in declared}
        if "input_size" in given and given["input_size"] is None:
            del given["input_size"]
        try:
            model = factory(**given)
        except Exception as e:
            raise ConfigError(f"model factory {name!r} failed: {type(e).__name__}: {_first(e)}") from e
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    build.__name__ = getattr(factory, "__name__", "factory")
    return build


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
