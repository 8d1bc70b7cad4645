"""The stores on both backends (SQLite file, PostgreSQL): behaviour must match."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from logtorukun.audit.store import AuditStore
from logtorukun.web.auth import AuthStore
from tests.web.support import FAST_HASHER


def test_append_finish_query_verify(database: str | Path) -> None:
    with AuditStore(database) as store:
        start = store.append("read", user="ann", host="web1", decision="allow", reason="ok")
        end = store.finish(start, "read_end", {"lines": 3})
        assert end.seq == start.seq + 1 and store.head() == end
        found = store.query(user="ann", order="asc")
        assert [r.event for r in found] == ["read", "read_end"]
        assert found[1].host == "web1" and found[1].ref == start.seq  # inherited context
        assert store.verify().ok
    with AuditStore(database, readonly=True) as reader:
        assert reader.head() == end
        assert [r.seq for r in reader.iter_records()] == [start.seq, end.seq]


def test_writers_in_two_stores_make_one_chain(database: str | Path) -> None:
    # two stores = two server instances; two threads each
    stores = [AuditStore(database), AuditStore(database)]
    errors: list[BaseException] = []

    def write(store: AuditStore, who: str) -> None:
        try:
            for i in range(150):
                store.append("read", user=who, params={"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(stores[i % 2], f"u{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors and not any(t.is_alive() for t in threads)
        report = stores[0].verify()
        assert report.ok and report.records == 600
        assert [r.seq for r in stores[1].iter_records()] == list(range(1, 601))
    finally:
        for s in stores:
            s.close()


def test_the_trail_refuses_rewrites(database: str | Path) -> None:
    with AuditStore(database) as store:
        store.append("read", user="ann", reason="first")
        conn = store._writer
        assert conn is not None
        for sql in ("UPDATE audit_log SET reason = 'edited'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.Error):
                conn.execute(sql)
        assert store.query()[0].reason == "first" and store.verify().ok


def test_sign_out_and_revocation_are_seen_by_every_instance(database: str | Path) -> None:
    a = AuthStore(database, hasher=FAST_HASHER)
    b = AuthStore(database, hasher=FAST_HASHER)
    try:
        a.add_user("ann", ["ops"], "correct horse")
        assert b.check_password("ann", "correct horse") is not None
        sid, _ = a.create_session("ann", 1)
        assert (s := b.session(sid)) is not None and s.user.name == "ann"
        a.end_session(sid)
        assert b.session(sid) is None
        token, info = b.create_token("ann", None)
        assert a.token_user(token)[2] == "token valid"
        b.revoke_token(info.id)
        assert a.token_user(token)[:1] == (None,) and a.token_user(token)[2] == "token revoked"
        a.remove_user("ann")
        assert b.get_user("ann") is None
    finally:
        a.close()
        b.close()
