"""The audit store's errors, and the one-line explanation (with a fix) that they carry.

Apart so the store, the verifier and the sinks raise the same types without importing
each other.
"""

from __future__ import annotations

from pathlib import Path

from ..db.postgres import PgError
from ..errors import UserError


class AuditError(UserError):
    """The audit store cannot be opened or read."""


class AuditWriteError(AuditError):
    """A record could not be written; the caller must refuse the request (fail closed)."""


def explain(path: Path, exc: BaseException, doing: str = "write the audit trail") -> str:
    """One line: what failed, with the fix. Requests stay refused until it is fixed."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, PgError):  # names the database (without its password) already
        return f"cannot {doing}: {text}; requests are refused until it answers again"
    low = text.lower()
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    if "readonly" in low or "read-only" in low or "permission" in low:
        fix = f"make {path} and its directory {path.parent} writable by the server's user"
    elif "locked" in low or "busy" in low:
        fix = "another process holds a write lock on it (find it with fuser), or it is stuck"
    elif "not a database" in low or "malformed" in low:
        fix = "it is not a healthy SQLite database; check [server] database in the config"
    elif "full" in low or "i/o" in low or "quota" in low:
        fix = f"free space on, or repair, the disk holding {path.parent}"
    else:
        fix = f"check [server] database and that {path.parent} is a writable directory"
    return f"{path}: cannot {doing} ({text}); {fix}"
