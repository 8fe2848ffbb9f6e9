"""The one base class of the errors a user can fix: the CLI prints their message in one line, exit code 2.

Anything else is a bug and keeps its traceback. No dependencies, so every layer can import it.
"""


class UserError(ValueError):
    """A mistake in what the user asked for (a name, a value, a file, a store); the message says what is valid."""
