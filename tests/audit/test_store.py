"""The audit store against real SQLite files: round trips, tampering from outside, failure."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from logtorukun.audit import (
    GENESIS_HASH,
    AuditError,
    AuditRef,
    AuditStore,
    AuditWriteError,
    JsonlSink,
    SyslogSink,
    sinks_from_settings,
)
from logtorukun.audit.schema import SCHEMA
from logtorukun.audit.store import record_hash
from logtorukun.config import ServerSettings
from logtorukun.errors import UserError

SRC = str(Path(__file__).resolve().parents[2] / "src")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def fill(store: AuditStore, n: int, start: int = 0) -> list[AuditRef]:
    refs = []
    for i in range(start, start + n):
        refs.append(
            store.append(
                "read",
                user=f"user{i % 3}",
                roles=["ops"],
                client="10.0.0.9",
                user_agent="pytest",
                action="tail",
                host=f"web{i % 2}",
                source="/var/log/worker/app.log",
                params={"lines": 100 + i},
                decision="allow",
            )
        )
    return refs


def tamper(
    path: Path, *statements: str, params: tuple[Any, ...] = (), careful: bool = True
) -> None:
    """What someone with write access to the file does: drop the triggers, change rows,
    and (if `careful`) put the triggers back, so only the chain can tell."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for trig in ("audit_log_no_update", "audit_log_no_delete", "audit_log_next_seq"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trig}")
        for sql in statements:
            conn.execute(sql, params if "?" in sql else ())
        if careful:
            for statement in SCHEMA:
                if "CREATE TRIGGER" in statement:
                    conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


def swap_sql(a: int, b: int) -> tuple[str, ...]:
    return (
        f"UPDATE audit_log SET seq = -1 WHERE seq = {a}",
        f"UPDATE audit_log SET seq = {a} WHERE seq = {b}",
        f"UPDATE audit_log SET seq = {b} WHERE seq = -1",
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "logtorukun.db"


@pytest.fixture
def store(db: Path) -> Any:
    s = AuditStore(db)
    yield s
    s.close()


# -- round trips ------------------------------------------------------------------------


def test_append_finish_query_round_trip(store: AuditStore) -> None:
    start = store.append(
        "follow_start",
        user="alice",
        roles=["ops", "dev"],
        client="192.0.2.7",
        user_agent="Mozilla/5.0",
        action="follow",
        host="web1",
        source="/var/log/worker/app.log",
        params={"pattern": "ERROR", "since": "2025-01-01T00:00:00Z"},
        decision="allow",
        reason="role ops",
    )
    end = store.finish(
        start, "follow_end", {"bytes": 1234, "lines": 10, "duration_ms": 5000, "error": None}
    )
    assert (start.seq, end.seq) == (1, 2)
    assert store.head() == end

    first, second = store.query(order="asc")
    assert first.prev_hash == GENESIS_HASH and first.hash == start.hash
    assert second.prev_hash == start.hash and second.hash == end.hash
    assert TS.fullmatch(first.ts) and TS.fullmatch(second.ts)
    assert first.roles == ("ops", "dev") and first.params["pattern"] == "ERROR"
    assert first.decision == "allow" and first.reason == "role ops"
    # The end record points at the start and inherits who/what, so filters find both ends.
    assert second.ref == 1 and second.outcome == {
        "bytes": 1234,
        "lines": 10,
        "duration_ms": 5000,
        "error": None,
    }
    assert (second.user, second.host, second.source, second.action, second.client) == (
        "alice",
        "web1",
        "/var/log/worker/app.log",
        "follow",
        "192.0.2.7",
    )
    assert second.decision is None and second.params == {}
    assert [r.seq for r in store.query(user="alice")] == [2, 1]
    assert store.verify().ok


def test_query_filters_paging_and_time(db: Path) -> None:
    now = [datetime(2025, 3, 1, 12, 0, tzinfo=UTC)]

    def clock() -> datetime:
        now[0] += timedelta(minutes=1)
        return now[0]

    with AuditStore(db, clock=clock) as s:
        fill(s, 10)
        s.append("refused", user="mallory", host="db1", decision="deny", reason="no grant")
        s.append("login_failed", user="mallory", client="203.0.113.5", decision="deny")

        assert [r.seq for r in s.query(decision="deny")] == [12, 11]
        assert [r.seq for r in s.query(event="refused")] == [11]
        assert {r.user for r in s.query(host="web0")} == {"user0", "user1", "user2"}
        assert len(s.query(source="/var/log/worker/app.log", limit=None)) == 10
        assert [r.seq for r in s.query(user="user1")] == [8, 5, 2]
        assert [r.seq for r in s.query(limit=3)] == [12, 11, 10]
        assert [r.seq for r in s.query(before_seq=10, limit=2)] == [9, 8]
        assert [r.seq for r in s.query(after_seq=10, order="asc")] == [11, 12]
        # seq 3 was written at 12:03, seq 5 at 12:05; until is exclusive.
        got = s.query(since="2025-03-01T12:03:00Z", until="2025-03-01 12:05", order="asc")
        assert [r.seq for r in got] == [3, 4]
        # An aware time in another zone means the same instant.
        got = s.query(
            since=datetime(2025, 3, 1, 21, 11, tzinfo=timezone(timedelta(hours=9))), limit=None
        )
        assert [r.seq for r in got] == [12, 11]
        with pytest.raises(ValueError, match="not a time"):
            s.query(since="yesterday-ish")
        with pytest.raises(ValueError):
            s.query(limit=0)


def test_export_jsonl_is_independently_verifiable(store: AuditStore) -> None:
    fill(store, 5)
    store.append("read", user="ユーザー", params={"pattern": "é\u2028x\x85y", "n": 1.5})
    out = io.StringIO()
    assert store.export("jsonl", out) == 6
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    prev = GENESIS_HASH
    for line in lines:
        # The recipe from the store's docstring, nothing from the package.
        rec = json.loads(line)
        h = rec.pop("hash")
        p = rec.pop("prev_hash")
        body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((p + body).encode()).hexdigest() == h
        assert p == prev
        prev = h
    assert prev == store.head().hash  # type: ignore[union-attr]


def test_export_since(db: Path) -> None:
    t = [datetime(2025, 1, 1, tzinfo=UTC)]

    def clock() -> datetime:
        t[0] += timedelta(days=1)
        return t[0]

    with AuditStore(db, clock=clock) as s:
        fill(s, 5)  # 2025-01-02 .. 2025-01-06
        out = io.StringIO()
        assert s.export("jsonl", out, since="2025-01-05") == 2
        assert [json.loads(x)["seq"] for x in out.getvalue().splitlines()] == [4, 5]


def test_csv_escapes_and_neutralises_formulas(store: AuditStore) -> None:
    nasty = 'a,b "quoted"\nsecond line'
    store.append(
        "refused",
        user='=HYPERLINK("http://evil","x")',
        client="+1-555",
        user_agent="@SUM(1)",
        host="-2+3",
        reason=nasty,
        decision="deny",
        params={"pattern": "=1+1"},
    )
    out = io.StringIO(newline="")
    store.export("csv", out)
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    header, row = rows
    cell = dict(zip(header, row, strict=True))
    assert cell["reason"] == nasty  # comma, quote and newline survive the round trip
    assert cell["user"] == '\'=HYPERLINK("http://evil","x")'
    assert cell["client"] == "'+1-555"
    assert cell["user_agent"] == "'@SUM(1)"
    assert cell["host"] == "'-2+3"
    assert json.loads(cell["params"]) == {"pattern": "=1+1"}  # JSON cells start with {
    assert cell["seq"] == "1" and cell["ref"] == "" and cell["decision"] == "deny"


def test_inputs_are_validated_and_normalised(db: Path) -> None:
    with AuditStore(db) as s:
        with pytest.raises(TypeError, match="unknown audit field"):
            s.append("read", usr="alice")  # type: ignore[call-arg]
        with pytest.raises(ValueError):
            s.append("Read; DROP TABLE")
        with pytest.raises(TypeError):
            s.append("read", roles="ops")
        with pytest.raises(ValueError):
            s.append("read", decision="maybe")  # type: ignore[arg-type]
        assert s.head() is None  # nothing half-written
        ref = s.append(
            "read",
            user="bad\udcffsurrogate",
            user_agent="x" * 10_000,
            params={
                "path": Path("/var/log/a.log"),
                "t": (1, 2),
                "nan": float("nan"),
                3: "int key",  # type: ignore[dict-item]
                "when": datetime(2025, 1, 1, tzinfo=UTC),
            },
        )
        (rec,) = s.query()
        assert rec.user == "bad?surrogate"
        assert rec.user_agent is not None and len(rec.user_agent) < 4200
        assert rec.params == {
            "path": "/var/log/a.log",
            "t": [1, 2],
            "nan": "nan",
            "3": "int key",
            "when": "2025-01-01T00:00:00+00:00",
        }
        assert rec.hash == ref.hash
    with AuditStore(db) as s:  # what was hashed is what was stored
        assert s.verify().ok


def test_audit_ref_parse() -> None:
    ref = AuditRef(42, "ab" * 32)
    assert AuditRef.parse(str(ref)) == ref
    assert AuditRef.parse(f"42:{'AB' * 32}") == ref
    for bad in ("42", "0:" + "a" * 64, "42:" + "a" * 63, "x:y"):
        with pytest.raises(ValueError):
            AuditRef.parse(bad)


# -- append-only and tamper detection --------------------------------------------------


def test_triggers_refuse_update_delete_and_replace(store: AuditStore, db: Path) -> None:
    fill(store, 3)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for sql in (
            "UPDATE audit_log SET user = 'x' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 2",
            # REPLACE deletes without firing DELETE triggers; the insert trigger stops it.
            "INSERT OR REPLACE INTO audit_log SELECT * FROM audit_log WHERE seq = 3",
            "INSERT INTO audit_log SELECT 9, ts, event, user, roles, client, user_agent, action,"
            " host, source, params, decision, reason, ref, outcome, prev_hash, hash"
            " FROM audit_log WHERE seq = 3",
        ):
            with pytest.raises(sqlite3.DatabaseError, match=r"append-only|next seq"):
                conn.execute(sql)
    finally:
        conn.close()
    assert store.verify().ok


def test_verify_names_an_edited_record(store: AuditStore, db: Path) -> None:
    fill(store, 10)
    tamper(db, "UPDATE audit_log SET user = 'nobody' WHERE seq = 5", careful=False)
    report = store.verify()
    assert not report.ok and report.first_bad == 5
    chain = [(p.seq, p.kind) for p in report.problems if p.kind != "guard_missing"]
    assert chain == [(5, "edited")]
    # The tamperer dropped the append-only triggers: reported as problems too.
    assert any(
        "audit_log_no_update" in p.detail for p in report.problems if p.kind == "guard_missing"
    )


def test_verify_names_a_record_with_mangled_json(store: AuditStore, db: Path) -> None:
    fill(store, 6)
    tamper(db, "UPDATE audit_log SET params = '{not json' WHERE seq = 3")
    report = store.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(3, "edited")]
    assert "params is not valid JSON" in str(report.problems[0])


def test_verify_names_a_deleted_record(store: AuditStore, db: Path) -> None:
    fill(store, 10)
    tamper(db, "DELETE FROM audit_log WHERE seq = 5")
    report = store.verify()
    assert report.first_bad == 5
    assert [(p.seq, p.kind) for p in report.problems] == [(5, "deleted")]
    assert report.records == 9


def test_verify_names_deleted_first_records(store: AuditStore, db: Path) -> None:
    fill(store, 6)
    tamper(db, "DELETE FROM audit_log WHERE seq <= 2")
    report = store.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(1, "deleted")]
    assert "1..2" in str(report.problems[0])


@pytest.mark.parametrize(("a", "b"), [(3, 8), (5, 6), (9, 10)])
def test_verify_names_reordered_records(store: AuditStore, db: Path, a: int, b: int) -> None:
    fill(store, 10)
    tamper(db, *swap_sql(a, b))
    report = store.verify()
    assert report.first_bad == a
    assert [(p.seq, p.kind) for p in report.problems] == [(a, "reordered"), (b, "reordered")]
    assert f"written as seq {b}" in report.problems[0].detail
    assert f"written as seq {a}" in report.problems[1].detail


def test_verify_catches_an_edit_that_was_rehashed(store: AuditStore, db: Path) -> None:
    fill(store, 8)
    (rec,) = [r for r in store.query(limit=None) if r.seq == 4]
    content = rec.content() | {"user": "nobody"}
    new_hash = record_hash(rec.prev_hash, content)
    tamper(
        db,
        "UPDATE audit_log SET user = 'nobody', hash = ? WHERE seq = 4",
        params=(new_hash,),
    )
    report = store.verify()
    # Record 4 is self-consistent now; the break shows where 5 no longer chains to it.
    assert [(p.seq, p.kind) for p in report.problems] == [(5, "broken_chain")]
    assert "seq 4" in report.problems[0].detail


def test_verify_report_stays_bounded_when_everything_was_rewritten(
    store: AuditStore, db: Path
) -> None:
    fill(store, 1500)
    tamper(db, "UPDATE audit_log SET user = 'nobody'")
    report = store.verify(max_problems=10)
    assert report.problem_count == 1500 and len(report.problems) == 10
    assert report.first_bad == 1 and {p.kind for p in report.problems} == {"edited"}


def test_tail_truncation_needs_an_anchor(store: AuditStore, db: Path) -> None:
    fill(store, 10)
    anchor = store.head()
    assert anchor is not None and anchor.seq == 10
    tamper(db, "DELETE FROM audit_log WHERE seq > 7")
    # sqlite_sequence still remembers seq 10.
    report = store.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(8, "deleted")]

    # A careful attacker fixes that too: the chain alone now looks fine...
    tamper(db, "UPDATE sqlite_sequence SET seq = 7 WHERE name = 'audit_log'")
    assert store.verify().ok
    # ...but not against the head a SIEM or an auditor kept.
    report = store.verify(expect_head=anchor)
    assert not report.ok and report.first_bad == 8
    assert "expected head seq 10" in str(report.problems[0])
    # An anchor that is still inside the store passes once new records follow it.
    assert store.verify(expect_head=AuditRef(7, store.head().hash)).ok  # type: ignore[union-attr]


def test_anchor_catches_a_rewritten_tail(store: AuditStore, db: Path) -> None:
    fill(store, 5)
    anchor = store.head()
    assert anchor is not None
    (last,) = store.query(limit=1)
    new_hash = record_hash(last.prev_hash, last.content() | {"user": "nobody"})
    tamper(db, "UPDATE audit_log SET user = 'nobody', hash = ? WHERE seq = 5", params=(new_hash,))
    assert store.verify().ok  # a re-hashed last record is invisible to the chain
    report = store.verify(expect_head=anchor)
    assert [(p.seq, p.kind) for p in report.problems] == [(5, "edited")]


def test_empty_store_verifies(store: AuditStore) -> None:
    report = store.verify()
    assert report.ok and report.records == 0 and report.head is None
    assert report.summary() == "audit chain OK: 0 records, head none"
    assert not store.verify(expect_head=AuditRef(3, "a" * 64)).ok


# -- failing closed ---------------------------------------------------------------------


def test_unwritable_location_refuses_to_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file where a directory should be\n")
    path = blocker / "logtorukun.db"
    with pytest.raises(AuditWriteError) as info:
        AuditStore(path)
    msg = str(info.value)
    assert isinstance(info.value, UserError)
    assert str(path) in msg and "\n" not in msg and "writable" in msg


def test_garbage_file_refuses_to_open(db: Path) -> None:
    db.write_bytes(b"this is not sqlite, just bytes " * 200)
    with pytest.raises(AuditWriteError, match="not a healthy SQLite database"):
        AuditStore(db)


def test_new_database_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    AuditStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_readonly_store_refuses_appends_and_missing_file(db: Path) -> None:
    with pytest.raises(AuditError, match="no audit database"):
        AuditStore(db, readonly=True)
    assert not db.exists()  # a read-only open never creates the file
    with AuditStore(db) as s:
        fill(s, 2)
    with AuditStore(db, readonly=True) as ro:
        assert ro.verify().ok and len(ro.query()) == 2
        with pytest.raises(AuditWriteError, match="read-only"):
            ro.append("read", user="alice")


def test_append_fails_closed_while_the_database_is_locked(db: Path) -> None:
    with AuditStore(db, busy_timeout=0.05) as s:
        fill(s, 3)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(AuditWriteError, match="locked") as info:
                s.append("read", user="alice")
            assert str(db) in str(info.value)
            assert s.write_failures == 1
        finally:
            other.execute("ROLLBACK")
            other.close()
        s.append("read", user="alice")  # recovers, and the chain has no hole
        report = s.verify()
        assert report.ok and report.records == 4


def test_append_fails_closed_when_the_disk_is_full(db: Path) -> None:
    """A real ENOSPC-like failure: the writer process may not grow any file past a limit."""
    AuditStore(db).close()
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from logtorukun.audit import AuditStore, AuditWriteError
        s = AuditStore({str(db)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        ok = 0
        try:
            for i in range(100000):
                s.append("read", user="u", params={{"pad": "x" * 2000, "i": i}})
                ok += 1
        except AuditWriteError as exc:
            print(ok, exc, flush=True)
            sys.exit(0)
        sys.exit("never failed")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    ok_text, _, message = proc.stdout.partition(" ")
    assert int(ok_text) > 2, proc.stdout
    assert str(db) in message, message
    with AuditStore(db) as s:
        report = s.verify()
        assert report.ok and report.records == int(ok_text)


# -- concurrency and crashes -------------------------------------------------------------


def test_eight_threads_keep_one_chain(store: AuditStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                ref = store.append("read", user=f"t{n}", params={"i": i})
                store.finish(ref, "read_end", {"lines": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = store.verify()
    assert report.ok and report.records == 800
    records = store.query(limit=None, order="asc")
    assert [r.seq for r in records] == list(range(1, 801))
    # Every end record points at a start by the same thread.
    by_seq = {r.seq: r for r in records}
    for r in records:
        if r.event == "read_end":
            assert r.ref is not None and by_seq[r.ref].user == r.user


APPENDER = """
import sys
from logtorukun.audit import AuditStore
s = AuditStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    ref = s.append("read", user=sys.argv[3], params={"i": i})
    print(f"{ref.seq}:{ref.hash}", flush=True)
"""


def _spawn(db: Path, n: int, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db), str(n), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def test_two_processes_keep_one_chain(db: Path) -> None:
    AuditStore(db).close()
    procs = [_spawn(db, 300, f"p{i}") for i in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    with AuditStore(db) as s:
        report = s.verify()
        assert report.ok and report.records == 600
        records = s.query(limit=None, order="asc")
        assert [r.seq for r in records] == list(range(1, 601))
        assert {r.user for r in records} == {"p0", "p1"}
        stored = {r.seq: r.hash for r in records}
    for out, _ in outputs:
        for line in out.split():
            seq, h = line.split(":")
            assert stored[int(seq)] == h


def test_kill_9_mid_burst_leaves_a_valid_chain(db: Path) -> None:
    AuditStore(db).close()
    proc = _spawn(db, 1_000_000, "victim")
    assert proc.stdout is not None
    acked: list[str] = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    # Only a line that ended in a newline is an acknowledgement: the kill can land in the
    # middle of printing the last one.
    acked += [line for line in rest.split("\n")[:-1] if line]
    assert proc.returncode == -signal.SIGKILL
    with AuditStore(db) as s:  # the server restarting
        report = s.verify()
        assert report.ok, [str(p) for p in report.problems]
        stored = {r.seq: r.hash for r in s.query(limit=None)}
        # Every append the child saw committed is there, unchanged.
        for item in acked:
            seq, h = item.split(":")
            assert stored[int(seq)] == h
        s.append("read", user="after-restart")
        assert s.verify().ok


# -- sinks ------------------------------------------------------------------------------


def test_jsonl_sink_copies_every_record_with_its_hash(tmp_path: Path, db: Path) -> None:
    copy = tmp_path / "siem" / "audit.jsonl"
    copy.parent.mkdir()
    old = os.umask(0o022)
    try:
        sink = JsonlSink(copy)
    finally:
        os.umask(old)
    with AuditStore(db, sinks=[sink]) as s:
        refs = fill(s, 3)
        lines = [json.loads(x) for x in copy.read_text().splitlines()]
        assert [(x["seq"], x["hash"]) for x in lines] == [(r.seq, r.hash) for r in refs]
        assert copy.stat().st_mode & 0o777 == 0o640
        # logrotate moves the file away: the next record starts a new one.
        copy.rename(copy.with_suffix(".1"))
        fill(s, 1)
        assert [json.loads(x)["seq"] for x in copy.read_text().splitlines()] == [4]
        assert s.sink_failures == 0


def test_sink_failure_is_counted_and_the_record_kept(tmp_path: Path, db: Path) -> None:
    copy = tmp_path / "audit.jsonl"
    with AuditStore(db, sinks=[JsonlSink(copy)]) as s:
        fill(s, 1)
        copy.unlink()
        copy.mkdir()  # the copy can no longer be written
        ref = s.append("read", user="alice")
        ref2 = s.append("read", user="bob")
        assert s.sink_failures == 2 and s.sink_failure_counts == {"jsonl": 2}
        assert s.head() == ref2 and ref.seq == 2
        assert s.verify().ok


def test_syslog_sink_uses_authpriv(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    import syslog

    opened: list[tuple[Any, ...]] = []
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: opened.append(a))
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: sent.append((prio, msg)))
    settings = ServerSettings(database=db, audit_syslog=True)
    (sink,) = sinks_from_settings(settings)
    assert isinstance(sink, SyslogSink)
    with AuditStore.from_settings(settings) as s:
        ok = s.append("read", user="alice", decision="allow")
        s.append("refused", user="mallory", decision="deny")
    assert opened[-1] == ("logtorukun", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    assert [p for p, _ in sent] == [
        syslog.LOG_AUTHPRIV | syslog.LOG_INFO,
        syslog.LOG_AUTHPRIV | syslog.LOG_NOTICE,
    ]
    first = json.loads(sent[0][1].removeprefix("audit "))
    assert (first["seq"], first["hash"]) == (ok.seq, ok.hash)
