"""Errors a user can fix, as the library raises them and the ``lora-sam`` command line shows them.

A user error (a missing or wrong file, a model type, an adapter of another base or family, bad data, a missing
extra) has a message that names the file and the field and says what to do. ``lora-sam`` prints it as one
paragraph on stderr and exits with status 2, its traceback shown only with ``--debug`` (or
``LORA_SAM_DEBUG=1``); any other exception is an internal error and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["DEBUG_ENV", "MissingExtra", "USER_ERRORS", "UserError"]

DEBUG_ENV = "LORA_SAM_DEBUG"
"""Set to 1 (or pass ``lora-sam --debug``) to see the traceback of a user error."""


class UserError(ValueError):
    """An input the user can fix; the message names it and says what to do (a ``ValueError``, as the library's
    checks of arguments have always been)."""


class MissingExtra(ImportError):
    """An optional extra that a model type or a command needs is not installed; the message gives the pip line."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # the library's checks of its inputs (UserError, data.annotations.DataError among them)
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
    MissingExtra,
)
"""What ``lora-sam`` reports as a user error (exit status 2, no traceback)."""
