"""What can go wrong between the web server (or CLI) and a worker, one class per cause.

Every class is a `UserError` with a one-line message that names the host, so the CLI
prints it without a traceback and the web server can answer with an HTTP status (its
one table is `HTTP_STATUS_FOR_EXIT` in web/workers.py). The gate's exit codes
(`logtorukun.gate.vocabulary.Exit`, shared) map onto them in `error_for_exit`; the CLI
exits with the gate's own code for gate errors, and with 255 (like `ssh`) when the
connection itself failed.
"""

from __future__ import annotations

from ..errors import UserError
from ..gate.vocabulary import Exit


class ClientError(UserError):
    """Base of every client error; `host` is the configured host name (or "")."""

    exit_code = 255

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.message = _one_line(message)
        super().__init__(f"{host}: {self.message}" if host else self.message)

    def again(self, note: str = "") -> ClientError:
        """A fresh copy to raise for another caller (the same object would pile up tracebacks)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.args = (f"{self.args[0]} {note}" if note else self.args[0],)
        return new


class UnknownHost(ClientError):
    """The name matches no `[[host]]` in the config."""

    exit_code = 2


class InvalidArgument(ClientError):
    """A value this client refuses to send (control characters, a relative path, ...)."""

    exit_code = 2


class KeyFileError(ClientError):
    """The client key in the config cannot be read or is encrypted."""

    exit_code = 2


class Unreachable(ClientError):
    """No SSH connection: refused, timed out, DNS, or the connection dropped mid-request."""


class ConnectionLost(Unreachable):
    """The connection or the bridge went away while this request was running."""

    nothing_received = False  # set by the API when no byte of the answer had arrived


class AuthRefused(ClientError):
    """sshd did not accept the client key (wrong key, wrong user, `from=` mismatch)."""


class HostKeyUnknown(ClientError):
    """known_hosts has no key (and no `@cert-authority`) for this host: never connected."""


class HostKeyChanged(ClientError):
    """known_hosts has a key for this host and the server offered another: never connected."""


class RequestTimeout(ClientError):
    """The request ran longer than the host's `request_timeout`; it was cancelled."""


class ProtocolError(ClientError):
    """The bridge broke the framing or sent something this client does not understand."""


class GateExitError(ClientError):
    """The gate answered with a non-zero exit code; `reason` is its one-line reason."""

    def __init__(self, host: str, gate_exit: int, reason: str) -> None:
        self.gate_exit = gate_exit
        self.reason = _one_line(reason) or f"exit code {gate_exit}"
        super().__init__(host, f"{self.label} (gate exit {gate_exit}): {self.reason}")
        self.exit_code = gate_exit

    label = "refused by the gate"


class GateRefused(GateExitError):
    """Bad request, refused by policy, policy broken, audit unwritable, reader failed."""


class NotFound(GateExitError):
    """The policy would allow it, but there is no such file, unit or container."""

    label = "not found"


class LimitHit(GateExitError):
    """A line, byte, CPU or time limit ended the output early; `partial` is what came."""

    label = "limit hit"

    def __init__(self, host: str, gate_exit: int, reason: str, partial: bytes = b"") -> None:
        super().__init__(host, gate_exit, reason)
        self.partial = partial


class Busy(GateExitError):
    """The worker already runs `max_concurrent` requests (or the bridge its streams)."""

    label = "busy"


def error_for_exit(host: str, gate_exit: int, reason: str) -> GateExitError:
    """The exception for a gate exit code (never called with 0)."""
    cls: type[GateExitError] = {
        Exit.NOT_FOUND: NotFound,
        Exit.LIMIT: LimitHit,
        Exit.BUSY: Busy,
    }.get(gate_exit, GateRefused)
    return cls(host, gate_exit, reason)


def _one_line(text: str) -> str:
    """Errors are one line: the first non-empty line, control characters made visible."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in line)[:500]
    return ""
