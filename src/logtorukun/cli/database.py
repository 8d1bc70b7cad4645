"""`logtorukun db upgrade|migrate-from-sqlite`: set up and fill a PostgreSQL database.

`upgrade` applies the SQL files in `db/migrations/` with yoyo-migrations (each once,
recorded in yoyo's own tables, under yoyo's lock so two instances starting together do
not race) and then grants the server's role what it needs and no more: SELECT and INSERT
on `audit_log`, never UPDATE, DELETE or TRUNCATE. Run it as the schema's owner
(`--url`), the server runs as its own role (`[server] database`).

`migrate-from-sqlite FILE` copies an existing SQLite store: users, API tokens and the
whole audit chain, record by record with its hashes unchanged, then verifies the copied
chain and compares its head with the SQLite file's. Sessions are not copied (everyone
signs in again).
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

from ..config import load_config
from ..db.postgres import Database, is_url, redact
from ..errors import UserError

MIGRATIONS = Path(__file__).parent.parent / "db" / "migrations"
APP_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT ON audit_log TO {role}",
    "REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {role}",
    "GRANT SELECT ON audit_meta TO {role}",
    "GRANT SELECT ON audit_log_high TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON auth_users, auth_sessions, auth_tokens TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON limit_buckets, login_failures, follow_slots TO {role}",
)
_COPY_TABLES = {
    "auth_users": ("name", "password_hash", "roles", "created", "disabled"),
    "auth_tokens": ("id", "user", "hash", "created", "expires", "revoked", "last_used"),
}


def register(sub: Any) -> None:
    db = sub.add_parser(
        "db",
        help="PostgreSQL: apply migrations, copy a SQLite store",
        description='For `[server] database = "postgresql://..."` (see docs/operations.md).',
    )
    cmds = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = cmds.add_parser("upgrade", help="apply the schema migrations and the role's grants")
    p.add_argument(
        "--url",
        metavar="URL",
        help="connect as this (the schema owner); default: [server] database",
    )
    p.add_argument(
        "--app-role",
        metavar="ROLE",
        help="the role the server connects as (default: the user in [server] database)",
    )
    p.set_defaults(func=cmd_upgrade)
    p = cmds.add_parser(
        "migrate-from-sqlite",
        help="copy users, tokens and the audit chain of a SQLite store into PostgreSQL",
    )
    p.add_argument("file", metavar="FILE", help="the SQLite database ([server] database before)")
    p.set_defaults(func=cmd_migrate)


def _server_url(args: argparse.Namespace) -> str:
    url = load_config(args.config).server.database_url
    if url is None:
        raise UserError(
            '[server] database is a SQLite file; set database = "postgresql://ROLE@HOST/DB"'
            " first (see docs/operations.md)"
        )
    return url


def upgrade(url: str, app_role: str | None = None) -> list[str]:
    """Apply what is not applied yet; grant `app_role`. Returns the migrations applied."""
    from yoyo import get_backend, read_migrations
    from yoyo.exceptions import LockTimeout

    if not is_url(url):
        raise UserError(f"{url!r} is not a postgresql:// URL")
    yoyo_url = url.replace("postgres://", "postgresql://", 1).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    try:
        backend = get_backend(yoyo_url)
    except Exception as exc:  # the driver's error types vary: one line for all
        raise UserError(f"cannot connect to {redact(url)}: {_line(exc)}") from None
    try:
        migrations = read_migrations(str(MIGRATIONS))
        with backend.lock(timeout=60):
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        if app_role:
            with backend.transaction():
                for grant in APP_GRANTS:
                    backend.execute(grant.format(role=_ident(app_role)))
    except LockTimeout:
        raise UserError("another `db upgrade` holds the migration lock for 60 s") from None
    except Exception as exc:
        raise UserError(f"db upgrade on {redact(url)} failed: {_line(exc)}") from None
    finally:
        backend.connection.close()
    return [m.id for m in todo]


def cmd_upgrade(args: argparse.Namespace) -> int:
    server = _server_url(args)
    url = args.url or server
    role = args.app_role
    if role is None and args.url:
        from urllib.parse import urlsplit

        role = urlsplit(server).username
    done = upgrade(url, role)
    print(f"applied {', '.join(done)}" if done else "schema up to date")
    if role:
        print(f"granted {role}: SELECT, INSERT on audit_log (no UPDATE, DELETE, TRUNCATE)")
    return 0


def migrate_from_sqlite(sqlite_file: Path, url: str) -> str:
    """Copy users, tokens and the audit chain; verify; the summary line."""
    from ..audit.store import AuditStore

    if not sqlite_file.is_file():
        raise UserError(f"{sqlite_file}: no such file")
    source = AuditStore(sqlite_file, readonly=True)
    try:
        target = AuditStore(url)
    except UserError:
        source.close()
        raise
    try:
        if target.head() is not None:
            raise UserError(f"{redact(url)} already holds audit records: copy into an empty one")
        report = source.verify()
        if not report.ok:
            raise UserError(f"{sqlite_file}: {report.summary()}; not copying a broken chain")
        src = sqlite3.connect(f"{sqlite_file.resolve().as_uri()}?mode=ro", uri=True)
        conn = Database.get(url).connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            counts = {}
            for table, columns in _COPY_TABLES.items():
                rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()  # noqa: S608
                marks = ", ".join("?" * len(columns))
                for row in rows:
                    conn.execute(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                        row,
                    )
                counts[table] = len(rows)
            from ..audit.schema import INSERT, SELECT

            cursor = src.execute(SELECT + " ORDER BY seq")
            copied = 0
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    conn.execute(INSERT, row)
                copied += len(rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise UserError(f"copy failed, nothing kept: {_line(exc)}") from None
        finally:
            src.close()
            conn.close()
        after = target.verify(expect_head=report.head)
        if not after.ok or after.head != report.head:
            raise UserError(f"the copy does not verify: {after.summary()}")
    finally:
        source.close()
        target.close()
    return (
        f"copied {counts['auth_users']} users, {counts['auth_tokens']} tokens and"
        f" {copied} audit records; {after.summary()}"
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    print(migrate_from_sqlite(Path(args.file), _server_url(args)))
    return 0


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise UserError(f"{name!r} is not a plain role name (letters, digits, '_')")
    return f'"{name}"'


def _line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
