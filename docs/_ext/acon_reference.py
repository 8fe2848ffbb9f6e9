"""Sphinx extension: reference tables read from the live objects at build time, never copied by hand.

``{acon-settings}`` tables ``studies.settings.FIELDS`` (every study setting: flag, type, default, range or
choices); ``{acon-registry} NAME`` tables a registry of ``studies.catalog.REGISTRIES``; ``{acon-layout} PART``
(``acon_layout``) tables the MLflow and Optuna layout. A name registered before the build (a study file, or
``ACON_DOCS_PRELOAD``, see ``conf.py``) appears on the page like a built-in one.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

from doc_tables import paragraph, table


class SettingsTable(Directive):
    """Every study setting with its flag, type, default, allowed values, and what a change does."""

    def run(self) -> list[nodes.Node]:
        """Read ``studies.settings.FIELDS`` now (not at import), so a patched declaration shows too."""
        from studies import settings

        header = ("setting", "flag", "type", "default", "allowed", "changes results", "help")
        rows = [setting_row(f, settings.flag(f)) for f in settings.FIELDS]
        return [table(header, rows, name="acon-settings")]


def setting_row(f: dataclasses.Field, flag: str) -> tuple[str, ...]:
    """One row of the settings table."""
    meta = f.metadata
    kind = meta["kind"].__name__
    if meta["kind"] is bool:
        flag = f"{flag} / --no-{flag[2:]}"
    results = "yes" if meta["results"] else "no"
    return (f"`{f.name}`", f"`{flag}`", kind, f"`{f.default!r}`", allowed(meta), results, meta["help"])


def allowed(meta: Any) -> str:
    """The values a setting accepts, as its check (``check_setting``) reads the same metadata."""
    if meta["choices"]:
        return ", ".join(f"`{c}`" for c in sorted(meta["choices"]))
    if meta["kind"] is bool:
        return "`True`, `False`"
    low, high = meta["low"], meta["high"]
    if meta["kind"] is int:
        return f"{low}..{high}" if high is not None else f">= {low if low is not None else 0}"
    if meta["kind"] is float:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        return f"{'(' if meta['low_open'] else '['}{lo}, {hi}{')' if meta['high_open'] else ']'}"
    return "any string"


class RegistryTable(Directive):
    """One registry: what a registered callable must accept and return, then each name with its metadata."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """The registry named by the argument, as ``run_study.py list NAME`` finds it."""
        from studies.catalog import REGISTRIES, registry_for

        what = self.arguments[0]
        if what not in REGISTRIES:
            raise self.error(f"unknown registry {what!r}; valid: {', '.join(sorted(REGISTRIES))}")
        registry = registry_for(what)
        module, attr = REGISTRIES[what]
        lead = f"`{module}.{attr}`, {len(registry)} entries. A registered entry: {registry.doc}"
        header, rows = registry_rows(what, registry)
        return [paragraph(lead), table(header, rows, name=f"acon-registry-{what}")]


def registry_rows(what: str, registry: Any) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and rows of a registry's table: name, help, and the metadata that concept declares."""
    if what == "studies":
        return ("study", "question", "kind", "design cells", "presets"), [
            (f"`{n}`", s.doc, s.sampler, str(len(s.designs)), ", ".join(s.preset_names()))
            for n, s in ((n, registry.get(n)) for n in registry.names())]
    extra = [k for k in registry.fields if k != "complexity"]
    header = ("name", "help", *extra)
    rows = []
    for name in registry.names():
        entry = registry.entry(name)
        cells = [f"`{name}`", entry.help]
        for key in extra:
            cells.append(options_text(entry) if key == "options" else f"`{entry.meta.get(key)!r}`")
        rows.append(tuple(cells))
    return header, rows


def options_text(entry: Any) -> str:
    """The keywords an entry accepts, with the defaults its factory declares; ``any`` for ``**kwargs``."""
    if entry.options is None:
        return "any"
    try:
        params = inspect.signature(entry.obj).parameters
    except (TypeError, ValueError):
        params = {}
    shown = []
    for name in sorted(entry.options):
        default = params[name].default if name in params else inspect.Parameter.empty
        shown.append(f"`{name}`" if default in (inspect.Parameter.empty, None) else f"`{name}={default!r}`")
    return ", ".join(shown) or "none"


def reference_pages(app: Any, env: Any, added: set, changed: set, removed: set) -> list[str]:
    """The reference pages, read again on every build: they read the code, which Sphinx does not watch."""
    return [name for name in env.found_docs if name.startswith("reference/")]


def setup(app: Any) -> dict[str, Any]:
    """Register the directives (the layout ones come from ``acon_layout``)."""
    app.add_directive("acon-settings", SettingsTable)
    app.add_directive("acon-registry", RegistryTable)
    importlib.import_module("acon_layout").setup(app)
    app.connect("env-get-outdated", reference_pages)
    return {"parallel_read_safe": True, "version": "1"}
