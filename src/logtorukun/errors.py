"""The base of every error a user can cause or fix: the CLI prints it as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake or condition the user can act on; `str(exc)` says what and how to fix it."""

    exit_code = 2
