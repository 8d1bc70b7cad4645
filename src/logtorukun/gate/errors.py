"""The one exception type the gate raises for a request it will not serve (its exit codes
are `vocabulary.Exit`, shared with the client and the web server)."""

from __future__ import annotations

from .vocabulary import Exit as Exit  # the code a GateError carries


class GateError(Exception):
    """A request ends here with `code`; `reason` is the one line shown to the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Cancelled(Exception):
    """The client went away or cancelled the request; stop quietly."""
