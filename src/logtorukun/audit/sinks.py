"""Copies of every audit record for a SIEM: a JSON-lines file and syslog.

They run after the SQLite commit, so the store stays the record of truth: a sink that
fails is counted (`AuditStore.sink_failures`, per sink in `sink_failure_counts`) and
logged, and the request goes on. Each copy carries seq and hash, so whoever holds it
holds the anchor that catches a truncated store (see `store.py`). Delivery is best
effort; a SIEM that must not miss records should follow the store by seq
(`AuditStore.query(after_seq=..., order="asc")`) instead.
"""

from __future__ import annotations

import json
import os
import socket
import syslog
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import AuditError
from .records import AuditRecord

if TYPE_CHECKING:
    from ..config import ServerSettings


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The head of the chain at one moment: seq and hash of the last record.

    The store sends one to every sink that has a `checkpoint(cp)` method, every
    `[server] checkpoint_every` records (default 1000) and when the server stops.
    Kept outside the server, they let `logtorukun audit verify --checkpoints FILE` tell
    a truncated or rewritten store from a good one without a head kept by hand."""

    seq: int
    hash: str
    ts: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "checkpoint": {
                    "seq": self.seq,
                    "hash": self.hash,
                    "ts": self.ts,
                    "reason": self.reason,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                }
            },
            sort_keys=True,
            separators=(",", ":"),
        )


class AuditSink(Protocol):
    """What the store calls after each commit, under its write lock (so in seq order).

    `emit(record)` for every record; optionally `checkpoint(cp: Checkpoint)` (looked up
    with getattr, so a sink without it is fine). Both raise on failure; the store counts
    and logs it and the request goes on. Keep them fast: they run on the write path."""

    name: str

    def emit(self, record: AuditRecord) -> None:
        """Raise on failure; the store counts and reports it."""

    def close(self) -> None: ...


class JsonlSink:
    """One canonical JSON line per record, appended with O_APPEND.

    A single write() per line, so two server processes appending to the same file do not
    interleave within a line. The file is reopened when logrotate moves it away.
    """

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o640) -> None:
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        try:
            self._open()
        except OSError as exc:
            raise AuditError(
                f"{self.path}: cannot open the audit JSON-lines copy ({exc.strerror}); "
                f"check [server] audit_jsonl and that {self.path.parent} is writable"
            ) from None

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        st = os.fstat(fd)
        self.close()
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        return fd

    def _current_fd(self) -> int:
        """Our fd, unless the file at `path` is another one now (rotated or removed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._open()
        if self._fd is None or (st.st_dev, st.st_ino) != self._id:
            return self._open()
        return self._fd

    def emit(self, record: AuditRecord) -> None:
        data = (record.to_json() + "\n").encode("utf-8")
        written = os.write(self._current_fd(), data)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")

    def checkpoint(self, cp: Checkpoint) -> None:
        data = (cp.to_json() + "\n").encode("utf-8")
        os.write(self._current_fd(), data)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class SyslogSink:
    """authpriv (readable by root only on most systems), ident `logtorukun`.

    The C library drops messages silently when no syslog daemon listens, so failures
    here are rarely visible; long records may be cut by the daemon (rsyslog: 8 KiB by
    default), which breaks re-verifying that one record from the syslog copy.
    """

    name = "syslog"

    def __init__(self, ident: str = "logtorukun", facility: int = syslog.LOG_AUTHPRIV) -> None:
        self.facility = facility
        # openlog is process-wide; the facility is repeated on every message anyway.
        syslog.openlog(ident, syslog.LOG_PID, facility)

    def emit(self, record: AuditRecord) -> None:
        level = syslog.LOG_NOTICE if record.decision == "deny" else syslog.LOG_INFO
        syslog.syslog(self.facility | level, "audit " + record.to_json())

    def checkpoint(self, cp: Checkpoint) -> None:
        syslog.syslog(self.facility | syslog.LOG_NOTICE, "audit-checkpoint " + cp.to_json())

    def close(self) -> None:
        pass


def sinks_from_settings(settings: ServerSettings) -> list[AuditSink]:
    sinks: list[AuditSink] = []
    if settings.audit_jsonl is not None:
        sinks.append(JsonlSink(settings.audit_jsonl))
    if settings.audit_syslog:
        sinks.append(SyslogSink())
    return sinks
