"""PostgreSQL only: migrations, the append-only guard in the database, the copy from
SQLite, and failing closed (then recovering) when the database goes away or is slow."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from logtorukun.audit.errors import AuditError, AuditWriteError
from logtorukun.audit.store import AuditStore
from logtorukun.cli import main
from logtorukun.cli.database import migrate_from_sqlite, upgrade
from logtorukun.db.postgres import APPEND_LOCK, close_pool
from logtorukun.web.auth import AuthStore
from tests.conftest import new_pg_database
from tests.support.postgres import APP, OWNER, Postgres
from tests.web.support import FAST_HASHER


def test_upgrade_is_idempotent_and_the_server_refuses_an_unmigrated_database(
    pg_server: Postgres, pg_url: str
) -> None:
    name = pg_url.rsplit("/", 1)[1]
    assert upgrade(pg_server.dsn(OWNER, name), APP) == []  # applied by the fixture already
    pg_server.create_database("bare")
    with pytest.raises(AuditWriteError, match=r"run `logtorukun db upgrade`"):
        AuditStore(pg_server.dsn(APP, "bare"))
    close_pool(pg_server.dsn(APP, "bare"))


def test_append_only_by_grants_and_by_triggers(pg_server: Postgres, pg_url: str) -> None:
    with AuditStore(pg_url) as store:
        store.append("read", user="ann", reason="first")
    name = pg_url.rsplit("/", 1)[1]
    for sql in (
        "UPDATE audit_log SET reason = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(RuntimeError, match="permission denied for table audit_log"):
            pg_server.psql(sql, name, APP)  # the server's role: no such grant
        with pytest.raises(RuntimeError, match="audit_log is append-only"):
            pg_server.psql(sql, name, OWNER)  # the owner: the triggers
    with pytest.raises(RuntimeError, match="audit_log takes only the next seq"):
        pg_server.psql(
            'INSERT INTO audit_log SELECT 7, ts, event, "user", roles, client, user_agent,'
            " action, host, source, params, decision, reason, ref, outcome, prev_hash, hash"
            " FROM audit_log",
            name,
            APP,
        )
    with AuditStore(pg_url, readonly=True) as store:
        assert store.verify().ok and store.query()[0].reason == "first"


def test_removing_the_last_records_is_found(pg_server: Postgres, pg_url: str) -> None:
    with AuditStore(pg_url) as store:
        for i in range(3):
            store.append("read", user="ann", params={"i": i})
    name = pg_url.rsplit("/", 1)[1]
    # a superuser can do anything; the high-water mark still tells
    pg_server.psql(
        "ALTER TABLE audit_log DISABLE TRIGGER USER; DELETE FROM audit_log WHERE seq = 3;"
        " ALTER TABLE audit_log ENABLE TRIGGER USER",
        name,
    )
    with AuditStore(pg_url, readonly=True) as store:
        report = store.verify()
    assert not report.ok and "once held seq 3 but now ends at seq 2" in report.summary() + str(
        report.problems
    )


def test_migrate_from_sqlite_copies_users_tokens_and_the_chain(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "old.db"
    auth = AuthStore(db, hasher=FAST_HASHER)
    auth.add_user("ann", ["ops"], "correct horse")
    token, _ = auth.create_token("ann", None)
    auth.close()
    with AuditStore(db) as old:
        for i in range(1200):
            ref = old.append("read", user="ann", params={"i": i})
        head = old.finish(ref, "read_end", {"lines": 1})
    summary = migrate_from_sqlite(db, pg_url)
    assert summary.startswith("copied 1 users, 1 tokens and 1201 audit records; audit chain OK")
    with AuditStore(pg_url) as new:
        assert new.head() == head
        after = new.append("login", user="ann")  # the chain goes on from the copied head
        assert after.seq == head.seq + 1 and new.verify().ok
    pg_auth = AuthStore(pg_url, hasher=FAST_HASHER)
    assert pg_auth.check_password("ann", "correct horse") is not None
    assert pg_auth.token_user(token)[2] == "token valid"
    pg_auth.close()
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndatabase = "{pg_url}"\n')
    capsys.readouterr()
    assert main(["--config", str(config), "db", "migrate-from-sqlite", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds audit records" in err


def test_database_down_fails_closed_and_recovers_without_restart(own_pg: Postgres) -> None:
    url = new_pg_database(own_pg)
    store = AuditStore(url)
    auth = AuthStore(url, hasher=FAST_HASHER)
    try:
        auth.add_user("ann", ["ops"], "correct horse")
        first = store.append("read", user="ann")
        own_pg.stop()
        with pytest.raises(AuditWriteError, match="PostgreSQL") as info:
            store.append("read", user="ann")
        assert "\n" not in str(info.value)
        with pytest.raises(AuditError):
            store.head()
        with pytest.raises(Exception, match="PostgreSQL"):
            auth.get_user("ann")
        own_pg.start()  # same port, same data
        again = store.append("read", user="ann")  # the same store object: no restart
        assert again.seq == first.seq + 1 and store.verify().ok
        assert auth.get_user("ann") is not None
    finally:
        store.close()
        auth.close()
        close_pool(url)


def test_a_slow_database_fails_an_append_within_the_lock_timeout(pg_url: str) -> None:
    with AuditStore(pg_url) as store, psycopg.connect(pg_url, autocommit=True) as other:
        store.append("read", user="ann")
        other.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK,))  # a stuck appender
        with pytest.raises(AuditWriteError, match=r"statement timeout|lock timeout"):
            store.append("read", user="bob")
        other.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK,))
        assert store.append("read", user="bob").seq == 2
        assert store.verify().ok
