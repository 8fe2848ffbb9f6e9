"""The errors a user can fix: the command line prints their message in one line and exits 2.

``UserError`` is the toolkit's (a study, a setting, a store, a file); ``ConfigError`` is the activation package's
(a name, an option, a value of an activation or a design, raised by ``acon`` and ``ablation``). ``USER_ERRORS`` is
both: what the CLI prints in one line and what stops a study at its first trial. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

from acon.registry import ConfigError


class UserError(ValueError):
    """A mistake in what the user asked for (a study, a value, a file, a store); the message says what is valid."""


USER_ERRORS = (UserError, ConfigError)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (a KeyError's quotes removed)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

__all__ = ["USER_ERRORS", "ConfigError", "UserError", "first_line"]
