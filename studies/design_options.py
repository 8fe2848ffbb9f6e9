"""The ``options`` design axis: an activation's own keyword options for one design, as one canonical string.

A design gives them as a dict (``{"k": 3}``) or a string (``"k=3"``); its cell, the Optuna param, the MLflow param and
the variant label carry the canonical string (keys sorted, ``"bn=False,kernel_size=5"``), and the model build reads
it back as typed keywords (``parse``). The name is the registry's (``Entry.options``, ``check_options``).
"""
from __future__ import annotations

import ast
from typing import Any

from studies.errors import UserError
from studies.tracking.schema import DESIGN_AXES

#: Keywords the model build sets for each site (``ablation.build``): not a design's to choose.
SITE_KEYWORDS = ("channel_dim", "original")
_SCALARS = (bool, int, float, str, type(None))
_SEPARATORS = (",", "=", "/")  # a string value holding one would not read back, or would split a label


def canonical(options: dict[str, Any] | str) -> str:
    """The canonical string of a design's options (``""``: none): ``{"kernel_size": 5, "bn": False}`` and
    ``"kernel_size=5, bn=False"`` alike give ``"bn=False,kernel_size=5"``."""
    values = parse(options) if isinstance(options, str) else dict(options)
    for key, value in values.items():
        _check(key, value)
    return ",".join(f"{key}={_text(value)}" for key, value in sorted(values.items()))


def parse(text: str) -> dict[str, Any]:
    """Typed keywords of an options string: ``"k=3,gate_bias=0.5,mode=x"`` -> ``{"k": 3, "gate_bias": 0.5,
    "mode": "x"}``; a value Python cannot read as a literal stays a string."""
    out: dict[str, Any] = {}
    for piece in (p.strip() for p in text.split(",")):
        key, eq, value = (part.strip() for part in piece.partition("="))
        if not piece:
            continue
        if not eq or not key.isidentifier():
            raise UserError(f"options {text!r}: {piece!r} is not name=value")
        if key in out:
            raise UserError(f"options {text!r}: {key!r} is given twice")
        out[key] = _value(value)
    return out


def _value(text: str) -> Any:
    """A scalar read as Python reads a literal (``3``, ``0.5``, ``False``, ``None``, ``'3'``), else the text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, _SCALARS) else text


def _text(value: Any) -> str:
    """How a value is written so that ``_value`` reads it back the same (a string that looks like a number quoted)."""
    if isinstance(value, str) and not (_value(value) == value and isinstance(_value(value), str)):
        return repr(value)
    return str(value)


def _check(key: str, value: Any) -> None:
    """Refuse an option another axis or the build sets, and a value the canonical string cannot carry."""
    if key in DESIGN_AXES:
        raise UserError(f"option {key!r} is the design axis {key!r}: set it as {{{key!r}: {value!r}}} in the design, "
                        f"not in its options")
    if key in SITE_KEYWORDS:
        raise UserError(f"option {key!r} is set by the model build for each site, not by a design")
    if not isinstance(key, str) or not key.isidentifier():
        raise UserError(f"option name {key!r} is not a Python identifier")
    if not isinstance(value, _SCALARS) or (isinstance(value, str) and any(s in value for s in _SEPARATORS)):
        raise UserError(f"option {key}={value!r}: options take numbers, booleans, None or strings without "
                        f"{' '.join(_SEPARATORS)}")
