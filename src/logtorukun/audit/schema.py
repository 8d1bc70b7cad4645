"""The `audit_log` table: its DDL and triggers, the statements that read and write it,
and the mapping between its rows and records.

Triggers abort any UPDATE or DELETE, and only the next seq may be INSERTed (which also
stops `INSERT OR REPLACE`, whose implicit delete skips DELETE triggers). That guards
against bugs, not against someone who can write the file: they drop the triggers, which
`missing_triggers` reports. The hash chain is what catches them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from .records import COLUMNS, AuditRecord

SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit_log"  # noqa: S608 - constant
INSERT = (
    f"INSERT INTO audit_log ({', '.join(COLUMNS)}) "  # noqa: S608 - constant
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)

SCHEMA = (
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
TRIGGERS = ("audit_log_no_update", "audit_log_no_delete", "audit_log_next_seq")
SCHEMA_VERSION = "1"


def missing_triggers(conn: sqlite3.Connection) -> list[str]:
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return [
        f"trigger {t} is missing: someone with write access to the file dropped it"
        for t in TRIGGERS
        if t not in names
    ]


def row_to_record(row: Sequence[Any]) -> AuditRecord:
    (
        seq,
        ts,
        event,
        user,
        roles,
        client,
        ua,
        action,
        host,
        source,
        params,
        decision,
        reason,
        ref,
        outcome,
        prev_hash,
        hash_,
    ) = row
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


def row_content(row: Sequence[Any]) -> dict[str, Any]:
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
