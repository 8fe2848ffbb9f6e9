"""Docutils tables for the generated reference pages: rows of plain strings in, a table node out.

A cell's text may hold ``code`` in single backticks; it becomes a literal. Nothing else is parsed, so a
generated cell can never break the build with stray markup.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from docutils import nodes


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, name: str = "") -> nodes.table:
    """A table with ``header`` and one row per item of ``rows``; ``name`` becomes a CSS class."""
    group = nodes.tgroup(cols=len(header))
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    head += _row(header)
    body = nodes.tbody()
    for cells in rows:
        body += _row(cells)
    group += head
    group += body
    out = nodes.table(classes=["acon-reference", name] if name else ["acon-reference"])
    out += group
    return out


def paragraph(text: str) -> nodes.paragraph:
    """A paragraph whose backticked parts are literals."""
    out = nodes.paragraph()
    out.extend(inline(text))
    return out


def inline(text: str) -> list[nodes.Node]:
    """``a `b` c`` as text, literal, text (reST's double backticks count as single ones)."""
    parts = text.replace("``", "`").split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: no markup at all
        return [nodes.Text(text)]
    return [nodes.literal(p, p) if i % 2 else nodes.Text(p) for i, p in enumerate(parts) if p]


def _row(cells: Sequence[str]) -> nodes.row:
    row = nodes.row()
    for text in cells:
        entry = nodes.entry()
        entry += paragraph(str(text))
        row += entry
    return row
