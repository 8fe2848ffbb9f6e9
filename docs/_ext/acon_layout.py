"""The MLflow and Optuna layout pages, read from the modules that declare it: ``studies.tracking.schema`` (every
MLflow tag, metric, param and artifact name) and ``studies.store.attrs`` (every Optuna attribute).

Each name is documented by the comment beside or above it in its module, so the page says what the code says.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import io
import tokenize
from typing import Any, Iterator

from docutils import nodes
from docutils.parsers.rst import Directive

from doc_tables import table

SCHEMA, ATTRS = "studies.tracking.schema", "studies.store.attrs"


def comments_by_line(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line (``#`` and ``#:`` stripped)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#:").strip()
    return out


def declared_constants(module_name: str) -> Iterator[tuple[str, Any, str, str]]:
    """``(python name, value, note, section)`` of each module-level constant, in source order.

    The note is the comment on the assignment's line, else the comment block above it, which also documents the
    assignments that follow it without a blank line; the section is the last ``# ---- title ----`` line seen.
    ``A, B = "x", "y"`` gives two constants with one note."""
    module = importlib.import_module(module_name)
    source = inspect.getsource(module)
    lines = source.splitlines()
    comments = comments_by_line(source)
    sections = {n: t.strip("- ") for n, t in comments.items() if t.startswith("----")}
    group, last_line = "", 0
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        section = next((sections[n] for n in sorted(sections, reverse=True) if n < node.lineno), "")
        above = _block_above(node.lineno, lines, comments)
        group = above or (group if node.lineno == last_line + 1 else "")
        last_line = node.end_lineno or node.lineno
        note = comments.get(node.lineno) or group
        for name in _target_names(node.targets[0]):
            if name.isupper():
                yield name, getattr(module, name), note, section


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple):
        return [t.id for t in target.elts if isinstance(t, ast.Name)]
    return []


def _block_above(lineno: int, lines: list[str], comments: dict[int, str]) -> str:
    """The whole-line comments directly above ``lineno`` (not a section rule), joined."""
    block, n = [], lineno - 1
    while n >= 1 and lines[n - 1].lstrip().startswith("#") and not comments.get(n, "").startswith("----"):
        block.insert(0, comments[n])
        n -= 1
    return " ".join(block)


def shown(value: Any) -> str:
    """A constant's value as a table shows it: strings and tuples of strings as literals."""
    if isinstance(value, str):
        return f"`{value.strip()}`" if value.strip() else "(whitespace)"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value!r}`"


def schema_rows() -> list[tuple[str, str, str]]:
    """Every name ``studies.tracking.schema`` declares (strings and tuples of names), with its comment."""
    return [(shown(v), f"`{n}`", note) for n, v, note, _ in declared_constants(SCHEMA)
            if isinstance(v, (str, tuple)) and not isinstance(v, bool)]


def optuna_rows() -> list[tuple[str, str, str, str]]:
    """Every Optuna attribute ``studies.store.attrs`` declares, with where it lives and its comment."""
    return [(shown(v), section or "value", f"`{n}`", note) for n, v, note, section in declared_constants(ATTRS)
            if isinstance(v, str)]


def epoch_metric_rows() -> list[tuple[str, str]]:
    """The per-epoch metrics: the training loop's name -> the MLflow key (step = epoch)."""
    schema = importlib.import_module(SCHEMA)
    return [(f"`{k}`", f"`{v}`") for k, v in schema.EPOCH_METRICS.items()]


def child_param_rows() -> list[tuple[str, str]]:
    """The params of each trial's child run: the design axes, the seed, each logged setting, the cost."""
    schema = importlib.import_module(SCHEMA)
    from studies.settings import FIELDS

    rows = [(f"`{axis}`", "design axis (`-` where it does not apply)") for axis in schema.DESIGN_AXES]
    rows.append((f"`{schema.SEED}`", "the cell's seed"))
    rows += [(f"`{f.name}`", f"setting: {f.metadata['help']}") for f in FIELDS if f.metadata["logged"]]
    rows += [(f"`{schema.COST}{k}`", "the design's cost against the ReLU model") for k in schema.COST_KEYS]
    return rows


def status_rows() -> list[tuple[str, str]]:
    """Optuna trial state -> MLflow run status."""
    schema = importlib.import_module(SCHEMA)
    return [(f"`{k}`", f"`{v}`") for k, v in schema.RUN_STATUS.items()]


PARTS = {
    "mlflow": (("name or value", "in `studies.tracking.schema`", "what it is"), schema_rows),
    "optuna": (("attribute", "kind", "in `studies.store.attrs`", "what it is"), optuna_rows),
    "epoch-metrics": (("training loop name", "MLflow metric key"), epoch_metric_rows),
    "child-params": (("param", "what"), child_param_rows),
    "statuses": (("Optuna trial state", "MLflow run status"), status_rows),
}


class LayoutTable(Directive):
    """One part of the tracking layout: ``mlflow``, ``optuna``, ``epoch-metrics``, ``child-params``, ``statuses``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """The table of the part named by the argument, read from the declaring module now."""
        part = self.arguments[0]
        if part not in PARTS:
            raise self.error(f"unknown layout part {part!r}; valid: {', '.join(sorted(PARTS))}")
        header, rows = PARTS[part]
        return [table(header, rows(), name=f"acon-layout-{part}")]


def setup(app: Any) -> None:
    """Register ``acon-layout`` (called by ``acon_reference.setup``)."""
    app.add_directive("acon-layout", LayoutTable)
