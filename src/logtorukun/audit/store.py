"""The web side's audit trail: an append-only, hash-chained table in the server's SQLite file.

This module is the store itself: opening the file, appending, reading. What a record is
and how it is hashed is in `records.py`, the table in `schema.py`, the chain walk in
`verify.py`, exports in `export.py`.

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

A JSON-lines record (export or sink) can be checked without this code: see `records.py`.

PostgreSQL: given a `postgresql://` URL instead of a path, the same code runs over
`db/postgres.py` (same SQL, appends serialised by an advisory lock across instances, the
append-only guard in triggers and in the grants of the server's role).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, Unpack

from ..db.postgres import PG_SCHEMA, Database, is_url
from .errors import AuditError, AuditWriteError, explain
from .export import ExportFormat, export_records
from .normalise import EVENTS, MAX_TEXT, normalise
from .records import (
    COLUMNS,
    GENESIS_HASH,
    AuditContext,
    AuditFields,
    AuditRecord,
    AuditRef,
    Decision,
    canonical_json,
    record_hash,
)
from .schema import INSERT, SCHEMA, SCHEMA_VERSION, SELECT, missing_triggers, row_to_record
from .sinks import Checkpoint
from .times import TimeArg, format_ts, parse_time
from .verify import VerifyProblem, VerifyReport, verify_chain

if TYPE_CHECKING:
    from ..config import ServerSettings
    from .sinks import AuditSink

# The names this module held before records, schema, verify and export moved out of it.
__all__ = [
    "COLUMNS",
    "EVENTS",
    "GENESIS_HASH",
    "MAX_TEXT",
    "SCHEMA_VERSION",
    "AuditContext",
    "AuditError",
    "AuditFields",
    "AuditRecord",
    "AuditRef",
    "AuditStore",
    "AuditWriteError",
    "Decision",
    "ExportFormat",
    "TimeArg",
    "VerifyProblem",
    "VerifyReport",
    "canonical_json",
    "format_ts",
    "parse_time",
    "record_hash",
]

log = logging.getLogger("logtorukun.audit")
RECOVERY = (
    "put the audit database back at this path (or remount its file system read-write); "
    "the server re-opens it by itself"
)

_INHERITED = ("user", "roles", "client", "user_agent", "action", "host", "source")


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
        checkpoint_every: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.checkpoint_every = checkpoint_every
        self.pg = Database.get(str(path)) if is_url(path) else None
        if self.pg is not None:
            self.path = Path(self.pg.name)  # for messages only
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
        self._durable = durable
        # Which file we opened, and why it is unusable now (None while it is fine).
        self._identity: tuple[int, int] | None = None
        self.broken: str | None = None
        self._next_recovery = 0.0
        self._refused_reason = ""
        self._last: AuditRef | None = None  # the last record this store wrote or saw
        if readonly:
            self._reader = self._connect_readonly()
        else:
            self._writer = self._open_writer(durable)
            self._identity = self._file_identity()
            row = self._writer.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._last = AuditRef(row[0], row[1]) if row else None

    @classmethod
    def from_settings(cls, settings: ServerSettings, **kwargs: Any) -> AuditStore:
        """The server's store with the SIEM sinks its config asks for."""
        from .sinks import sinks_from_settings

        return cls(
            settings.store,
            sinks=sinks_from_settings(settings),
            checkpoint_every=settings.checkpoint_every,
            busy_timeout=settings.busy_timeout,
            **kwargs,
        )

    # -- opening --------------------------------------------------------------------

    def _open_writer(self, durable: bool) -> sqlite3.Connection:
        if self.pg is not None:
            return self._open_pg()
        path = self.path
        if not path.exists():
            # Create it private: the same file holds password hashes and sessions.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise AuditWriteError(explain(path, exc, "create the audit database")) from None
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
                for warning in missing_triggers(conn):
                    log.warning(
                        "%s: %s; recreating it (check `logtorukun audit verify`)", path, warning
                    )
            for statement in SCHEMA:
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
            raise AuditWriteError(explain(path, exc, "open the audit database")) from None
        return conn

    def _open_pg(self) -> sqlite3.Connection:
        """Fail at startup, not on the first request, when the database is not ready."""
        assert self.pg is not None
        conn = self.pg.connect()
        try:
            row = conn.execute("SELECT value FROM audit_meta WHERE key = 'pg_schema'").fetchone()
            for warning in missing_triggers(conn):
                log.warning("%s: %s (run `logtorukun db upgrade`)", self.path, warning)
        except sqlite3.Error as exc:
            if "does not exist" in str(exc):
                raise AuditWriteError(
                    f"{self.path}: no logtorukun tables there: run `logtorukun db upgrade`"
                ) from None
            raise AuditWriteError(f"{exc}; is the database reachable?") from None
        if row is None or row[0] != PG_SCHEMA:
            raise AuditWriteError(
                f"{self.path}: database schema {row[0] if row else 'missing'}, this server"
                f" needs {PG_SCHEMA}: run `logtorukun db upgrade`"
            )
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """For auditors and the CLI: never creates the file or the schema."""
        if self.pg is not None:
            try:
                return self._open_pg()
            except AuditWriteError as exc:
                raise AuditError(str(exc)) from None
        path = self.path
        if not path.is_file():
            raise AuditError(
                f"{path}: no audit database there (check [server] database in the config; "
                "the server creates it on first start)"
            )
        try:
            conn = self._sqlite_readonly()
            conn.execute("SELECT 1 FROM audit_log LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                raise AuditError(f"{path}: no audit_log table (not an audit database?)") from None
            raise AuditError(explain(path, exc, "read the audit database")) from None
        return conn

    def _connection_for_scan(self) -> sqlite3.Connection:
        """A private read connection, so a long verify/export never holds up appends."""
        self._check_open()
        if self.pg is not None:
            return self.pg.connect()
        try:
            return self._sqlite_readonly()
        except sqlite3.Error as exc:
            raise AuditError(explain(self.path, exc, "read the audit database")) from None

    def _sqlite_readonly(self) -> sqlite3.Connection:
        """The SQLite file opened read-only (`mode=ro`: never creates it)."""
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _read_conn(self) -> sqlite3.Connection:
        self._check_open()
        if self._reader is None:
            self._reader = self._connection_for_scan()
        return self._reader

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError(f"{self.path}: the audit store is closed")
        if self.broken is not None:
            raise AuditWriteError(self.broken)

    # -- the file being taken away ----------------------------------------------------
    #
    # SQLite keeps writing to the inode it opened: deleted, the records vanish when the
    # server exits; renamed or replaced, they go where nobody looks. So before every
    # write (and on every `check()`, which /healthz calls) the path is looked at again:
    # gone, another inode, or a read-only file system means the store is "broken" and
    # every write and read is refused until a usable audit database is at the path
    # again (moved back, restored, the file system remounted read-write): the next
    # write or check re-opens it. A new, empty database is never created here: that
    # would start a fresh trail behind the auditors' backs (a restart creates one).

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _file_problem(self) -> str | None:
        if self.pg is not None:  # no file: PostgreSQL answers, or the request fails
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the audit database was deleted or renamed"
        except OSError as exc:
            return f"the audit database cannot be looked at ({exc.strerror})"
        if self._identity is not None and (st.st_dev, st.st_ino) != self._identity:
            return "the audit database was replaced by another file"
        try:
            if os.statvfs(self.path).f_flag & os.ST_RDONLY:
                return "the audit database is on a read-only file system"
        except OSError as exc:
            return f"the audit database's file system cannot be checked ({exc.strerror})"
        return None

    def _break(self, problem: str) -> None:
        """Fail closed: drop the connections; reads and writes refused until recovery."""
        if self.broken is None:
            log.error("%s: %s; refusing every read and write until it is back", self.path, problem)
        self.broken = f"{self.path}: {problem}; {RECOVERY}"
        for conn in (self._writer, self._reader):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._writer = self._reader = None

    def _recover(self) -> None:
        """Re-open the path if a usable audit database is there again (at most 5 times a
        second: a refused request stays cheap)."""
        now = time.monotonic()
        if now < self._next_recovery:
            return
        self._next_recovery = now + 0.2
        if not self.path.is_file() or self._file_problem_new() is not None:
            return
        try:
            conn = self._open_writer(self._durable)
        except AuditWriteError:
            return
        last = self._last
        row = None
        if last is not None:
            row = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (last.seq,)).fetchone()
        if last is None or row is None or row[0] != last.hash:
            # Not the trail that was taken away (an empty file, an older copy, another
            # chain): stay closed. A restart accepts it, and `audit verify
            # --checkpoints` then shows what is missing.
            conn.close()
            if self._refused_reason != "other":
                self._refused_reason = "other"
                log.error(
                    "%s: the database there does not hold this server's last record "
                    "(seq %s); not using it",
                    self.path,
                    last.seq if last else "?",
                )
            return
        self._writer = conn
        self._identity = self._file_identity()
        log.warning("%s: the audit database is back; serving again", self.path)
        self.broken = None
        self._refused_reason = ""

    def _file_problem_new(self) -> str | None:
        try:
            if os.statvfs(self.path).f_flag & os.ST_RDONLY:
                return "read-only"
        except OSError:
            return "unreadable"
        return None

    def check(self) -> None:
        """Raise AuditWriteError if the store cannot be used now (after trying to recover)."""
        if self.readonly:
            return
        with self._lock, self._read_lock:
            self._check_locked()

    def _check_locked(self) -> None:
        if self._closed:
            raise AuditWriteError(f"{self.path}: cannot write the audit trail: store closed")
        if self.broken is not None:
            self._recover()
        if self.broken is None:
            problem = self._file_problem()
            if problem is not None:
                self._break(problem)
        if self.broken is not None:
            self.write_failures += 1
            raise AuditWriteError(self.broken)

    # -- writing --------------------------------------------------------------------

    def append(self, event: str, **fields: Unpack[AuditFields]) -> AuditRef:
        """Commit one record before the request proceeds; raises AuditWriteError if not."""
        return self._write(normalise(event, fields), inherit_from=None)

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
        values = normalise(event, {**fields, "ref": ref.seq, "outcome": outcome})
        return self._write(values, inherit_from=ref.seq)

    def _write(self, values: dict[str, Any], inherit_from: int | None) -> AuditRef:
        with self._lock:
            if not self.readonly and not self._closed:
                with self._read_lock:
                    self._check_locked()
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
                why = explain(self.path, exc)
                if any(w in str(exc).lower() for w in ("readonly", "full", "disk i/o")):
                    with self._read_lock:
                        self._break(why.split(": ", 1)[-1])
                raise AuditWriteError(why) from None
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            self._last = AuditRef(record.seq, record.hash)
            # After the commit and still under the lock, so sinks see seq order.
            self._emit(record)
            if record.seq % self.checkpoint_every == 0:
                self._checkpoint(self._last, f"every {self.checkpoint_every} records")
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
            INSERT,
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
                        "failures in /metrics): %s",
                        name,
                        record.seq,
                        self.path,
                        exc,
                    )
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
                raise AuditError(explain(self.path, exc, "read the audit database")) from None
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
        sql = SELECT
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
                raise AuditError(explain(self.path, exc, "read the audit database")) from None
        return [row_to_record(r) for r in rows]

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
        sql = SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        conn = self._connection_for_scan()
        try:
            conn.execute("BEGIN")
            cursor = conn.execute(sql, args)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    yield row_to_record(row)
        except sqlite3.Error as exc:
            raise AuditError(explain(self.path, exc, "read the audit database")) from None
        finally:
            conn.close()

    def export(
        self,
        fmt: ExportFormat,
        out: TextIO,
        since: TimeArg | None = None,
    ) -> int:
        """Write records oldest first; returns how many. Open CSV targets with newline=""."""
        return export_records(fmt, out, self.iter_records(since=since))

    # -- verifying ------------------------------------------------------------------

    def verify(
        self,
        expect_head: AuditRef | None = None,
        *,
        max_problems: int = 100,
        checkpoints: Sequence[AuditRef] = (),
    ) -> VerifyReport:
        """Walk the whole chain from one snapshot; see the module docstring for what it proves."""
        return verify_chain(
            self._connection_for_scan,
            self.path,
            expect_head,
            max_problems=max_problems,
            checkpoints=checkpoints,
        )

    # -- checkpoints ------------------------------------------------------------------

    def write_checkpoint(self, reason: str = "shutdown") -> AuditRef | None:
        """Send the head (seq and hash) to every sink now; the server does it every
        `checkpoint_every` records and when it stops. Returns the head sent."""
        with self._lock:
            head = self._last
            if head is not None:
                self._checkpoint(head, reason)
        return head

    def _checkpoint(self, head: AuditRef, reason: str) -> None:
        point = Checkpoint(head.seq, head.hash, format_ts(self._clock()), reason)
        for sink in self.sinks:
            send = getattr(sink, "checkpoint", None)
            if send is None:
                continue
            try:
                send(point)
            except Exception as exc:
                self.sink_failures += 1
                log.warning("audit sink %s: checkpoint at seq %d failed: %s", sink, head.seq, exc)

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
