"""The web side's audit trail: an append-only, hash-chained table in the server's SQLite file.

Why SQLite: the server already keeps users and sessions there, an append costs tens of
microseconds, and WAL lets auditors read and verify while the server writes.

Integrity
- Every record carries `prev_hash` and `hash = sha256(prev_hash + canonical JSON of every
  other field, seq included)`; seq 1 chains from `GENESIS_HASH`. Editing, deleting or
  reordering a record breaks the chain, and `verify()` names the first bad seq.
- Triggers abort any UPDATE or DELETE, and only the next seq may be INSERTed (which also
  stops `INSERT OR REPLACE`, whose implicit delete skips DELETE triggers). That guards
  against bugs, not against someone who can write the file: they drop the triggers. The
  chain is what catches them.
- Residual risk: removing the *last* records (or the whole table), or rewriting the tail
  and re-hashing it, leaves a valid, shorter chain. Only an anchor kept elsewhere catches
  that: compare `head()` with the last seq and hash a SIEM received (the JSON-lines and
  syslog sinks carry both), or run `logtorukun audit verify --expect-head SEQ:HASH`
  with a head recorded earlier. `sqlite_sequence` also remembers the highest seq ever
  written; that catches a careless truncation, not someone who edits it too.

Durability: WAL with synchronous=NORMAL. A committed record survives a kill -9 of the
server (it is in the WAL, in the OS page cache, replayed on the next open). It does NOT
survive a power cut or kernel crash: the last records committed before it may be lost.
The file stays consistent and the chain valid, only shorter, which against a SIEM anchor
looks exactly like truncation. `AuditStore(path, durable=True)` (synchronous=FULL, one
fsync per append, milliseconds) is there for sites that need it.

A JSON-lines record (export or sink) can be checked without this code:

    rec = json.loads(line); h = rec.pop("hash"); p = rec.pop("prev_hash")
    body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256((p + body).encode()).hexdigest() == h

CSV export is for people and spreadsheets, not for verification: cells that a
spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or CR) are
prefixed with `'`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypedDict, Unpack

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import ServerSettings
    from .sinks import AuditSink

log = logging.getLogger("logtorukun.audit")

GENESIS_HASH = "0" * 64
# The events the server writes; others are accepted (lowercase identifiers) so a new
# feature does not need a schema change.
EVENTS = frozenset(
    {
        "login",
        "login_failed",
        "logout",
        "token_used",
        "read",
        "read_end",
        "follow_start",
        "follow_end",
        "audit_view",
        "export",
        "refused",
    }
)
# Longer strings are cut: a hostile User-Agent or pattern must not bloat every record.
MAX_TEXT = 4096

Decision = Literal["allow", "deny"]
ExportFormat = Literal["jsonl", "csv"]
TimeArg = datetime | date | str

_EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TEXT_FIELDS = ("user", "client", "user_agent", "action", "host", "source", "reason")
_INHERITED = ("user", "roles", "client", "user_agent", "action", "host", "source")
# Column order in the table, in records and in CSV.
COLUMNS = (
    "seq",
    "ts",
    "event",
    "user",
    "roles",
    "client",
    "user_agent",
    "action",
    "host",
    "source",
    "params",
    "decision",
    "reason",
    "ref",
    "outcome",
    "prev_hash",
    "hash",
)
_FIELD_NAMES = frozenset(COLUMNS) - {"seq", "ts", "event", "prev_hash", "hash"}
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit_log"  # noqa: S608 - constant
_INSERT = (
    f"INSERT INTO audit_log ({', '.join(COLUMNS)}) "  # noqa: S608 - constant
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        ts         TEXT NOT NULL,
        event      TEXT NOT NULL,
        user       TEXT,
        roles      TEXT NOT NULL,
        client     TEXT,
        user_agent TEXT,
        action     TEXT,
        host       TEXT,
        source     TEXT,
        params     TEXT NOT NULL,
        decision   TEXT,
        reason     TEXT,
        ref        INTEGER,
        outcome    TEXT,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts)",
    "CREATE INDEX IF NOT EXISTS audit_log_user ON audit_log (user, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_host ON audit_log (host, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_source ON audit_log (source, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_decision ON audit_log (decision, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_event ON audit_log (event, seq)",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_next_seq BEFORE INSERT ON audit_log
        WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_log)
        BEGIN SELECT RAISE(ABORT, 'audit_log takes only the next seq'); END""",
)
_TRIGGERS = ("audit_log_no_update", "audit_log_no_delete", "audit_log_next_seq")
SCHEMA_VERSION = "1"


class AuditError(UserError):
    """The audit store cannot be opened or read."""


class AuditWriteError(AuditError):
    """A record could not be written; the caller must refuse the request (fail closed)."""


class AuditContext(TypedDict, total=False):
    """Who asked for what; an end record inherits the unset ones from its start."""

    user: str | None
    roles: Sequence[str]
    client: str | None
    user_agent: str | None
    action: str | None
    host: str | None
    source: str | None
    params: Mapping[str, Any]
    decision: Decision | None
    reason: str | None


class AuditFields(AuditContext, total=False):
    ref: int | None
    outcome: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditRef:
    """A position in the chain; `str()` is the `SEQ:HASH` anchor a SIEM or an auditor keeps."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditRef:
        m = re.fullmatch(r"([1-9][0-9]{0,18}):([0-9a-fA-F]{64})", text.strip())
        if not m:
            raise ValueError(f"{text!r} is not SEQ:HASH (e.g. 42:<64 hex digits>)")
        return cls(int(m.group(1)), m.group(2).lower())


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: str
    event: str
    user: str | None = None
    roles: tuple[str, ...] = ()
    client: str | None = None
    user_agent: str | None = None
    action: str | None = None
    host: str | None = None
    source: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    reason: str | None = None
    ref: int | None = None
    outcome: dict[str, Any] | None = None
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def content(self) -> dict[str, Any]:
        """The hashed fields, as JSON values."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "user": self.user,
            "roles": list(self.roles),
            "client": self.client,
            "user_agent": self.user_agent,
            "action": self.action,
            "host": self.host,
            "source": self.source,
            "params": self.params,
            "decision": self.decision,
            "reason": self.reason,
            "ref": self.ref,
            "outcome": self.outcome,
        }

    def as_dict(self) -> dict[str, Any]:
        d = self.content()
        d["prev_hash"] = self.prev_hash
        d["hash"] = self.hash
        return d

    def to_json(self) -> str:
        """One JSON line: what exports and sinks write, verifiable on its own.

        Canonical JSON except that NEL, U+2028 and U+2029 are escaped: `str.splitlines`
        and some log shippers break lines there.
        """
        return canonical_json(self.as_dict()).translate(_LINE_BREAKS)

    def as_ref(self) -> AuditRef:
        return AuditRef(self.seq, self.hash)


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    seq: int
    kind: Literal["edited", "deleted", "reordered", "broken_chain"]
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    head: AuditRef | None = None
    problems: list[VerifyProblem] = field(default_factory=list)
    # Problems found, including those beyond the `max_problems` kept in `problems`.
    problem_count: int = 0
    # Suspicious but not a broken chain (e.g. a trigger someone dropped).
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_bad(self) -> int | None:
        return self.problems[0].seq if self.problems else None

    def summary(self) -> str:
        head = f"head {self.head.seq} {self.head.hash}" if self.head else "head none"
        if self.ok:
            return f"audit chain OK: {self.records} records, {head}"
        return (
            f"audit chain BROKEN: first bad seq {self.first_bad}; "
            f"{self.problem_count} problem(s) in {self.records} records, {head}"
        )


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


def format_ts(moment: datetime | date) -> str:
    """Stored form of a time: UTC, microseconds, `+00:00`, so text order is time order."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


_RELATIVE = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: TimeArg, *, now: datetime | None = None) -> str:
    """ISO 8601 (naive means UTC), a date, or an age such as `15m`, `2h`, `7d`."""
    if isinstance(value, datetime | date):
        return format_ts(value)
    text = value.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        delta = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return format_ts((now or datetime.now(UTC)) - delta)
    try:
        return format_ts(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2025-01-31, 2025-01-31T12:00:00Z) "
            "or an age such as 15m, 2h, 7d"
        ) from None


def _clean(text: str) -> str:
    """Bounded, valid UTF-8 (a lone surrogate would make SQLite and the hash fail)."""
    if len(text) > MAX_TEXT:
        text = f"{text[:MAX_TEXT]}...(+{len(text) - MAX_TEXT} chars)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _json_value(value: Any) -> Any:
    """Turn caller data into plain JSON values that survive a store/load round trip."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_clean(str(k)): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_json_value(v) for v in items]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _clean(str(value))


def _normalise(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate caller input outside the write lock; returns column values (JSON as text)."""
    if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
        raise ValueError(f"audit event {event!r}: use a lowercase identifier such as 'read'")
    unknown = set(fields) - _FIELD_NAMES
    if unknown:
        raise TypeError(f"unknown audit field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"event": event}
    for name in _TEXT_FIELDS:
        if name in fields:
            v = fields[name]
            if v is not None and not isinstance(v, str):
                raise TypeError(f"audit field {name} must be str or None, not {type(v).__name__}")
            out[name] = None if v is None else _clean(v)
    if "roles" in fields:
        roles = fields["roles"]
        if isinstance(roles, str) or not all(isinstance(r, str) for r in roles):
            raise TypeError("audit field roles must be a sequence of str")
        out["roles"] = [_clean(r) for r in roles]
    for name in ("params", "outcome"):
        if name in fields:
            v = fields[name]
            if v is None and name == "outcome":
                out[name] = None
            elif isinstance(v, Mapping):
                out[name] = _json_value(v)
            else:
                raise TypeError(f"audit field {name} must be a mapping")
    if "decision" in fields and fields["decision"] not in (None, "allow", "deny"):
        raise ValueError(f"audit decision must be 'allow', 'deny' or None: {fields['decision']!r}")
    if "decision" in fields:
        out["decision"] = fields["decision"]
    if "ref" in fields:
        ref = fields["ref"]
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 1):
            raise TypeError("audit field ref must be a positive int (a seq) or None")
        out["ref"] = ref
    return out


def _explain(path: Path, exc: BaseException, doing: str = "write the audit trail") -> str:
    """One line: what failed, with the fix. Requests stay refused until it is fixed."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
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


def _row_to_record(row: Sequence[Any]) -> AuditRecord:
    (seq, ts, event, user, roles, client, ua, action, host, source, params, decision, reason,
     ref, outcome, prev_hash, hash_) = row  # fmt: skip
    return AuditRecord(
        seq=seq,
        ts=ts,
        event=event,
        user=user,
        roles=tuple(json.loads(roles)),
        client=client,
        user_agent=ua,
        action=action,
        host=host,
        source=source,
        params=json.loads(params),
        decision=decision,
        reason=reason,
        ref=ref,
        outcome=None if outcome is None else json.loads(outcome),
        prev_hash=prev_hash,
        hash=hash_,
    )


def _row_content(row: Sequence[Any]) -> dict[str, Any]:
    """The hashed fields of a raw row; raises ValueError when a JSON column was mangled."""
    content = dict(zip(COLUMNS[:-2], row[:-2], strict=True))
    for name in ("roles", "params", "outcome"):
        raw = content[name]
        if raw is None and name == "outcome":
            continue
        if not isinstance(raw, str):
            raise ValueError(f"{name} is not JSON text")
        try:
            content[name] = json.loads(raw)
        except ValueError:
            raise ValueError(f"{name} is not valid JSON") from None
    return content


class AuditStore:
    """The audit trail. Thread-safe; several processes may share the file and one chain.

    `append`/`finish` raise `AuditWriteError` when the record is not committed: refuse the
    request. Sinks (SIEM copies) run after the commit; their failures are counted in
    `sink_failures` and logged, never raised.

    Calls block: an append is tens of microseconds, but SQLite's WAL checkpoint (about
    every hundred appends) adds a few milliseconds to one of them, and another process
    holding the database's write lock (any table in the file) makes it wait up to
    `busy_timeout` before failing closed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sinks: Sequence[AuditSink] = (),
        readonly: bool = False,
        durable: bool = False,
        busy_timeout: float = 5.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.sinks = list(sinks)
        self.busy_timeout = busy_timeout
        self._clock = clock or (lambda: datetime.now(UTC))
        # For /metrics.
        self.write_failures = 0
        self.sink_failures = 0
        self.sink_failure_counts: dict[str, int] = {getattr(s, "name", "?"): 0 for s in sinks}
        self._sink_failing: set[str] = set()
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        if readonly:
            self._reader = self._connect_readonly()
        else:
            self._writer = self._open_writer(durable)

    @classmethod
    def from_settings(cls, settings: ServerSettings, **kwargs: Any) -> AuditStore:
        """The server's store with the SIEM sinks its config asks for."""
        from .sinks import sinks_from_settings

        return cls(settings.database, sinks=sinks_from_settings(settings), **kwargs)

    # -- opening --------------------------------------------------------------------

    def _open_writer(self, durable: bool) -> sqlite3.Connection:
        path = self.path
        if not path.exists():
            # Create it private: the same file holds password hashes and sessions.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise AuditWriteError(_explain(path, exc, "create the audit database")) from None
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not wal (unsupported filesystem?)", path, mode)
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_log'").fetchone():
                for warning in _missing_triggers(conn):
                    log.warning(
                        "%s: %s; recreating it (check `logtorukun audit verify`)", path, warning
                    )
            for statement in _SCHEMA:
                conn.execute(statement)
            # Also a write probe: a read-only file fails here, at startup, not on a request.
            conn.execute(
                "INSERT OR REPLACE INTO audit_meta (key, value) VALUES ('schema', ?)",
                (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise AuditWriteError(_explain(path, exc, "open the audit database")) from None
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """For auditors and the CLI: never creates the file or the schema."""
        path = self.path
        if not path.is_file():
            raise AuditError(
                f"{path}: no audit database there (check [server] database in the config; "
                "the server creates it on first start)"
            )
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("SELECT 1 FROM audit_log LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                raise AuditError(f"{path}: no audit_log table (not an audit database?)") from None
            raise AuditError(_explain(path, exc, "read the audit database")) from None
        return conn

    def _connection_for_scan(self) -> sqlite3.Connection:
        """A private read connection, so a long verify/export never holds up appends."""
        self._check_open()
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, exc, "read the audit database")) from None
        return conn

    def _read_conn(self) -> sqlite3.Connection:
        self._check_open()
        if self._reader is None:
            self._reader = self._connection_for_scan()
        return self._reader

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError(f"{self.path}: the audit store is closed")

    # -- writing --------------------------------------------------------------------

    def append(self, event: str, **fields: Unpack[AuditFields]) -> AuditRef:
        """Commit one record before the request proceeds; raises AuditWriteError if not."""
        return self._write(_normalise(event, fields), inherit_from=None)

    def finish(
        self,
        ref: AuditRef,
        event: str,
        outcome: Mapping[str, Any],
        **fields: Unpack[AuditContext],
    ) -> AuditRef:
        """Record how a request ended, as a new record pointing at its start (never an UPDATE).

        Context not given (user, host, source...) is copied from the start record, so a
        filter by user or host finds both ends.
        """
        values = _normalise(event, {**fields, "ref": ref.seq, "outcome": outcome})
        return self._write(values, inherit_from=ref.seq)

    def _write(self, values: dict[str, Any], inherit_from: int | None) -> AuditRef:
        with self._lock:
            conn = self._writer
            if conn is None or self._closed:
                self.write_failures += 1
                why = "closed" if self._closed else "opened read-only"
                raise AuditWriteError(f"{self.path}: cannot write the audit trail: store {why}")
            try:
                record = self._insert(conn, values, inherit_from)
            except (sqlite3.Error, OSError) as exc:
                self.write_failures += 1
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise AuditWriteError(_explain(self.path, exc)) from None
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            # After the commit and still under the lock, so sinks see seq order.
            self._emit(record)
        return AuditRef(record.seq, record.hash)

    def _insert(
        self, conn: sqlite3.Connection, values: dict[str, Any], inherit_from: int | None
    ) -> AuditRecord:
        conn.execute("BEGIN IMMEDIATE")
        # Read the head inside the write transaction: another process may have appended.
        row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev_hash = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
        if inherit_from is not None:
            missing = [k for k in _INHERITED if k not in values]
            if missing:
                start = conn.execute(
                    f"SELECT {', '.join(missing)} FROM audit_log WHERE seq = ?",  # noqa: S608
                    (inherit_from,),
                ).fetchone()
                if start is not None:
                    for k, v in zip(missing, start, strict=True):
                        values[k] = json.loads(v) if k == "roles" else v
        record = AuditRecord(
            seq=seq,
            ts=format_ts(self._clock()),
            event=values["event"],
            user=values.get("user"),
            roles=tuple(values.get("roles", ())),
            client=values.get("client"),
            user_agent=values.get("user_agent"),
            action=values.get("action"),
            host=values.get("host"),
            source=values.get("source"),
            params=values.get("params", {}),
            decision=values.get("decision"),
            reason=values.get("reason"),
            ref=values.get("ref"),
            outcome=values.get("outcome"),
            prev_hash=prev_hash,
        )
        content = record.content()
        digest = record_hash(prev_hash, content)
        conn.execute(
            _INSERT,
            (
                seq,
                record.ts,
                record.event,
                record.user,
                canonical_json(content["roles"]),
                record.client,
                record.user_agent,
                record.action,
                record.host,
                record.source,
                canonical_json(record.params),
                record.decision,
                record.reason,
                record.ref,
                None if record.outcome is None else canonical_json(record.outcome),
                prev_hash,
                digest,
            ),
        )
        conn.execute("COMMIT")
        return replace(record, hash=digest)

    def _emit(self, record: AuditRecord) -> None:
        for sink in self.sinks:
            name = getattr(sink, "name", type(sink).__name__)
            try:
                sink.emit(record)
            except Exception as exc:
                self.sink_failures += 1
                self.sink_failure_counts[name] = self.sink_failure_counts.get(name, 0) + 1
                if name not in self._sink_failing:
                    self._sink_failing.add(name)
                    log.warning(
                        "audit sink %s failed at seq %d (kept in %s; counting further "
                        "failures in /metrics): %s", name, record.seq, self.path, exc,
                    )  # fmt: skip
            else:
                if name in self._sink_failing:
                    self._sink_failing.discard(name)
                    log.warning("audit sink %s works again from seq %d", name, record.seq)

    # -- reading --------------------------------------------------------------------

    def head(self) -> AuditRef | None:
        """The last record: the anchor to hand to a SIEM or `verify --expect-head`."""
        with self._read_lock:
            try:
                row = (
                    self._read_conn()
                    .execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise AuditError(_explain(self.path, exc, "read the audit database")) from None
        return AuditRef(row[0], row[1]) if row else None

    def query(
        self,
        *,
        user: str | None = None,
        host: str | None = None,
        source: str | None = None,
        decision: Decision | None = None,
        event: str | None = None,
        since: TimeArg | None = None,
        until: TimeArg | None = None,
        limit: int | None = 100,
        after_seq: int | None = None,
        before_seq: int | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> list[AuditRecord]:
        """Exact-match filters on indexed columns; `since` inclusive, `until` exclusive.

        Newest first by default; page back with `before_seq`, or follow the trail forward
        with `after_seq` and `order="asc"`.
        """
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("user", user),
            ("host", host),
            ("source", source),
            ("decision", decision),
            ("event", event),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("ts >= ?")
            args.append(parse_time(since))
        if until is not None:
            where.append("ts < ?")
            args.append(parse_time(until))
        if after_seq is not None:
            where.append("seq > ?")
            args.append(int(after_seq))
        if before_seq is not None:
            where.append("seq < ?")
            args.append(int(before_seq))
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq " + ("ASC" if order == "asc" else "DESC")
        if limit is not None:
            if limit < 1:
                raise ValueError("limit must be at least 1")
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._read_lock:
            try:
                rows = self._read_conn().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(_explain(self.path, exc, "read the audit database")) from None
        return [_row_to_record(r) for r in rows]

    def iter_records(
        self, *, since: TimeArg | None = None, after_seq: int | None = None
    ) -> Iterator[AuditRecord]:
        """Every record in seq order from one consistent snapshot, streamed."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(parse_time(since))
        if after_seq is not None:
            where.append("seq > ?")
            args.append(int(after_seq))
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        conn = self._connection_for_scan()
        try:
            conn.execute("BEGIN")
            cursor = conn.execute(sql, args)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    yield _row_to_record(row)
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, exc, "read the audit database")) from None
        finally:
            conn.close()

    def export(
        self,
        fmt: ExportFormat,
        out: TextIO,
        since: TimeArg | None = None,
    ) -> int:
        """Write records oldest first; returns how many. Open CSV targets with newline=""."""
        if fmt == "jsonl":
            n = 0
            for record in self.iter_records(since=since):
                out.write(record.to_json() + "\n")
                n += 1
            return n
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            n = 0
            for record in self.iter_records(since=since):
                writer.writerow(_csv_row(record))
                n += 1
            return n
        raise ValueError(f"export format {fmt!r}: use jsonl or csv")

    # -- verifying ------------------------------------------------------------------

    def verify(
        self, expect_head: AuditRef | None = None, *, max_problems: int = 100
    ) -> VerifyReport:
        """Walk the whole chain from one snapshot; see the module docstring for what it proves."""
        started = time.perf_counter()
        report = VerifyReport()
        # Bounded memory even when every record of a big store was rewritten.
        problems: list[VerifyProblem] = []

        def add(problem: VerifyProblem) -> None:
            report.problem_count += 1
            if len(problems) < _KEEP_PROBLEMS:
                problems.append(problem)

        conn = self._connection_for_scan()
        try:
            conn.execute("BEGIN")
            report.warnings.extend(_missing_triggers(conn))
            cursor = conn.execute(_SELECT + " ORDER BY seq")
            expected_seq, expected_prev = 1, GENESIS_HASH
            prev_flagged = False
            mismatched: list[tuple[int, dict[str, Any], str, str]] = []
            anchor_hash: str | None = None
            last: tuple[int, str] | None = None
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    report.records += 1
                    seq, prev_hash, stored = row[0], row[-2], row[-1]
                    gap = seq != expected_seq
                    if gap:
                        add(_gap_problem(expected_seq, seq))
                    flagged = False
                    try:
                        content = _row_content(row)
                    except ValueError as exc:
                        add(VerifyProblem(seq, "edited", str(exc)))
                        flagged = True
                    else:
                        if (
                            not isinstance(prev_hash, str)
                            or record_hash(prev_hash, content) != stored
                        ):
                            if len(mismatched) < _KEEP_PROBLEMS:
                                mismatched.append((seq, content, str(prev_hash), str(stored)))
                            else:
                                add(VerifyProblem(seq, "edited", _EDITED))
                            flagged = True
                        elif prev_hash != expected_prev and not gap and not prev_flagged:
                            add(_unlinked_problem(seq))
                    if expect_head is not None and seq == expect_head.seq:
                        anchor_hash = stored
                    expected_seq, expected_prev, prev_flagged = seq + 1, stored, flagged
                    last = (seq, stored)
            for problem in _classify_mismatches(mismatched):
                add(problem)
            row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'"
            ).fetchone()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, exc, "read the audit database")) from None
        finally:
            conn.close()
        last_seq = last[0] if last else 0
        report.head = AuditRef(*last) if last else None
        high_water = row[0] if row and isinstance(row[0], int) else 0
        if high_water > last_seq:
            add(
                VerifyProblem(
                    last_seq + 1,
                    "deleted",
                    f"the store once held seq {high_water} but now ends at seq {last_seq} "
                    "(records removed from the end)",
                )
            )
        if expect_head is not None:
            if expect_head.seq > last_seq and high_water <= last_seq:
                add(
                    VerifyProblem(
                        last_seq + 1,
                        "deleted",
                        f"expected head seq {expect_head.seq} but the store ends at seq "
                        f"{last_seq} (the last records were removed)",
                    )
                )
            elif anchor_hash is not None and anchor_hash != expect_head.hash:
                add(
                    VerifyProblem(
                        expect_head.seq,
                        "edited",
                        f"hash {anchor_hash[:16]}... differs from the expected head "
                        f"{expect_head.hash[:16]}... (rewritten since the anchor was taken)",
                    )
                )
        problems.sort(key=lambda p: p.seq)
        report.problems = problems[:max_problems]
        report.seconds = time.perf_counter() - started
        return report

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            for conn in (self._writer, self._reader):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            self._writer = self._reader = None
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEEP_PROBLEMS = 1000
_EDITED = "its contents no longer match its hash"


def _gap_problem(expected: int, found: int) -> VerifyProblem:
    if found < expected:  # cannot happen with an INTEGER PRIMARY KEY, but say so if it does
        return VerifyProblem(found, "reordered", f"out of order after seq {expected - 1}")
    if found == expected + 1:
        detail = f"missing; the chain jumps from seq {expected - 1} to seq {found}"
    else:
        detail = f"seq {expected}..{found - 1} missing; the chain jumps to seq {found}"
    return VerifyProblem(expected, "deleted", detail)


def _unlinked_problem(seq: int) -> VerifyProblem:
    if seq == 1:
        return VerifyProblem(seq, "broken_chain", "does not start from the genesis hash")
    return VerifyProblem(
        seq,
        "broken_chain",
        f"does not chain to seq {seq - 1}: seq {seq - 1} was rewritten and re-hashed, "
        "or this record was forged",
    )


def _classify_mismatches(
    mismatched: list[tuple[int, dict[str, Any], str, str]],
) -> list[VerifyProblem]:
    """Tell a moved record (its hash fits another seq) from an edited one.

    A reorder permutes seqs among the mismatched records, so those seqs (and the
    neighbours, for a shift) are the only candidates worth hashing.
    """
    seqs = [m[0] for m in mismatched] if len(mismatched) <= 200 else []
    out: list[VerifyProblem] = []
    for seq, content, prev_hash, stored in mismatched:
        moved_from = None
        for candidate in dict.fromkeys([*seqs, seq - 1, seq + 1]):
            if candidate == seq or candidate < 1:
                continue
            if record_hash(prev_hash, {**content, "seq": candidate}) == stored:
                moved_from = candidate
                break
        if moved_from is not None:
            out.append(
                VerifyProblem(seq, "reordered", f"this record was written as seq {moved_from}")
            )
        else:
            out.append(VerifyProblem(seq, "edited", _EDITED))
    return out


def _missing_triggers(conn: sqlite3.Connection) -> list[str]:
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return [
        f"trigger {t} is missing: someone with write access to the file dropped it"
        for t in _TRIGGERS
        if t not in names
    ]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        value = canonical_json(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # a spreadsheet would run it as a formula
    return value


def _csv_row(record: AuditRecord) -> list[Any]:
    d = record.as_dict()
    return [_csv_cell(d[c]) for c in COLUMNS]
