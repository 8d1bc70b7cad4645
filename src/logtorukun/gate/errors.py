"""Exit codes and the one exception type the gate raises for a request it will not serve."""

from __future__ import annotations


class Exit:
    """Documented exit codes of `logtorukun-gate` (docs/gate.md).

    Plain ints, not an IntEnum: `enum` costs ~2 ms of every gate start.
    """

    OK = 0
    BAD_REQUEST = 2  # not in the grammar: unknown command, bad option, bad number
    REFUSED = 3  # in the grammar, but the policy does not allow it
    NOT_FOUND = 4  # allowed name, but no such file / unit / container
    LIMIT = 5  # a line, byte, CPU or wall-clock limit ended the output early
    BUSY = 6  # max_concurrent requests already running on this worker
    CONFIG = 7  # the policy file is missing or invalid: everything is refused
    AUDIT = 8  # the audit record could not be written: refused (fail closed)
    FAILED = 9  # the reader itself failed (journalctl/docker error, I/O error)


class GateError(Exception):
    """A request ends here with `code`; `reason` is the one line shown to the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Cancelled(Exception):
    """The client went away or cancelled the request; stop quietly."""
