"""Errors a person can act on.

Raise `UserError` for anything caused by input (paths, flags, files, data): the CLI prints
its message without a traceback and exits with status 2. Everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input. The message says what is wrong and what to do about it."""

    exit_code = 2


class NotFound(UserError):
    """A named thing (file, model, version) does not exist."""
