"""PostgreSQL for the server's stores: a connection pool, and connections that speak the
subset of `sqlite3.Connection` the stores use, so the audit and auth stores keep one
set of SQL for both backends.

What a `PgConnection` changes on the way (all in `translate`):
- `?` placeholders become `%s`; the column `user` (a reserved word) is quoted;
- `BEGIN IMMEDIATE` (the audit store's "I am about to append") becomes a transaction
  that first takes an advisory lock: appends from every instance are serialised by the
  database, each reads the chain head after the previous one committed;
- `BEGIN` (a verify or an export) is a REPEATABLE READ snapshot;
- the SQLite catalogue look-ups (`sqlite_master` triggers, `sqlite_sequence`) read the
  PostgreSQL equivalents (`pg_trigger`, the `audit_log_high` sequence).

Outside a transaction each statement borrows a pool connection and gives it back at
once, so a restarted database costs the statements in flight, never a restart of the
server: broken connections are dropped and replaced by the pool. Every wait is bounded
(`TIMEOUT` for a free connection or a new one, statement and lock timeouts on the
server), because the stores are called from the event loop: a slow or unreachable
database fails requests closed (503) within seconds instead of hanging the server.
Errors come out as `PgError`, a `sqlite3.OperationalError`, which the stores already
turn into their one-line refusals.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

SCHEMES = ("postgresql://", "postgres://")
TIMEOUT = 3.0  # seconds: a free pool connection, a new connection, a statement, a lock
APPEND_LOCK = 0x6C746B61  # pg_advisory_xact_lock key serialising audit appends ("ltka")
FOLLOW_LOCK = 0x6C746B66  # ... and the per-user follow count ("ltkf")
PG_SCHEMA = "2"  # what the newest file in db/migrations/ writes into audit_meta


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


class PgError(sqlite3.OperationalError):
    """A PostgreSQL failure, in the type the stores already handle."""


_STATEMENTS = {
    "SELECT name FROM sqlite_master WHERE type = 'trigger'": (
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = 'audit_log'::regclass"
    ),
    "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'": (
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM audit_log_high"
    ),
}
_USER = re.compile(r'(?<![\w"\'])user(?![\w"\'])')


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """The PostgreSQL form of one of the stores' SQLite statements."""
    sql = " ".join(sql.split()) if "\n" in sql else sql
    if sql in _STATEMENTS:
        return _STATEMENTS[sql]
    return _USER.sub('"user"', sql.replace("%", "%%").replace("?", "%s"))


class Database:
    """One pool per database URL and process, shared by the stores."""

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self.url = url
        self.name = redact(url)
        self.pool = ConnectionPool(
            url.replace("postgres://", "postgresql://", 1),
            min_size=1,
            max_size=max_size,
            timeout=TIMEOUT,
            open=False,
            check=ConnectionPool.check_connection,
            reconnect_timeout=0,  # keep trying for ever in the background
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, int(TIMEOUT)),
                "options": (
                    f"-c statement_timeout={int(TIMEOUT * 1000)}"
                    f" -c lock_timeout={int(TIMEOUT * 1000)}"
                    " -c idle_in_transaction_session_timeout=60000"
                ),
            },
        )
        self.pool.open(wait=False)

    @classmethod
    def get(cls, url: str) -> Database:
        with _POOLS_LOCK:
            db = _POOLS.get(url)
            if db is None or db.pool.closed:
                db = _POOLS[url] = cls(url)
            return db

    def connect(self, lock: int = APPEND_LOCK) -> sqlite3.Connection:
        """A `sqlite3.Connection` look-alike (see the module docstring); `BEGIN
        IMMEDIATE` on it takes the advisory lock `lock`."""
        return cast(sqlite3.Connection, PgConnection(self, lock))

    def close(self) -> None:
        with _POOLS_LOCK:
            if _POOLS.get(self.url) is self:
                del _POOLS[self.url]
        self.pool.close()


_POOLS: dict[str, Database] = {}
_POOLS_LOCK = threading.Lock()


def close_pool(url: str) -> None:
    """Close this process's pool for `url` (tests, and `db` commands when done)."""
    with _POOLS_LOCK:
        db = _POOLS.get(url)
    if db is not None:
        db.close()


class _Rows:
    """A finished result: what a statement outside a transaction returns."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self._pos = 0
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        out = self._rows[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out = self._rows[self._pos :]
        self._pos = len(self._rows)
        return out

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """Statements on a pool; a transaction holds one connection from BEGIN to its end."""

    def __init__(self, db: Database, lock: int = APPEND_LOCK) -> None:
        self.db = db
        self.lock = lock
        self._conn: psycopg.Connection[Any] | None = None  # held during a transaction
        self._closed = False

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        word = sql.strip().upper()
        if word in ("BEGIN", "BEGIN IMMEDIATE"):
            self._begin(write=word == "BEGIN IMMEDIATE")
            return _Rows([], -1)
        if word in ("COMMIT", "ROLLBACK"):
            self._end(word)
            return _Rows([], -1)
        statement = translate(sql)
        if self._conn is not None:
            try:
                cur = self._conn.execute(statement, tuple(args))
            except psycopg.Error as exc:
                self._release(broken=True)
                raise self._error(exc) from None
            return cur
        try:
            with self.db.pool.connection() as conn:
                cur = conn.execute(statement, tuple(args))
                rows = cur.fetchall() if cur.description is not None else []
                return _Rows(rows, cur.rowcount)
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error(exc) from None

    def _begin(self, *, write: bool) -> None:
        if self._conn is not None:
            raise PgError("cannot start a transaction within a transaction")
        try:
            conn = self.db.pool.getconn()
        except PoolTimeout as exc:
            raise self._error(exc) from None
        self._conn = conn
        try:
            if write:
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock,))
            else:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.Error as exc:
            self._release(broken=True)
            raise self._error(exc) from None

    def _end(self, word: str) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute(word)
        except psycopg.Error as exc:
            self._release(broken=True)
            raise self._error(exc) from None
        self._release()

    def _release(self, *, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if broken and not conn.closed:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()  # the pool discards it
        self.db.pool.putconn(conn)

    def _error(self, exc: BaseException) -> PgError:
        if isinstance(exc, PoolTimeout):
            text = f"no database connection within {TIMEOUT:g} s (PostgreSQL down or overloaded)"
        else:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return PgError(f"PostgreSQL {self.db.name}: {text}")

    def close(self) -> None:
        self._release(broken=True)
        self._closed = True
