"""Users, sessions and API tokens, in the server's SQLite file (tables prefixed `auth_`).

Why server-side sessions: sign-out and `user remove` take effect on the next request,
and a stolen cookie can be revoked. Only hashes are stored: argon2id for passwords
(slow on purpose), SHA-256 for session ids and tokens (they are 256-bit random, so a
fast hash is enough and keeps every request cheap).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..db.postgres import Database, is_url
from ..errors import UserError

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
TOKEN_PREFIX = "ltk_"  # noqa: S105 - a prefix, not a secret
_TOKEN = re.compile(r"ltk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS auth_users (
        name TEXT PRIMARY KEY, password_hash TEXT, roles TEXT NOT NULL,
        created REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS auth_sessions (
        id_hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
        created REAL NOT NULL, expires REAL NOT NULL, via TEXT NOT NULL DEFAULT 'password')""",
    "CREATE INDEX IF NOT EXISTS auth_sessions_user ON auth_sessions (user)",
    """CREATE TABLE IF NOT EXISTS auth_tokens (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, hash TEXT NOT NULL,
        created REAL NOT NULL, expires REAL, revoked INTEGER NOT NULL DEFAULT 0,
        last_used REAL)""",
)


class AuthError(UserError):
    """A user/token management command cannot be done as asked."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: tuple[str, ...]
    disabled: bool = False
    has_password: bool = True


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires: float
    via: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    user: str
    created: float
    expires: float | None
    revoked: bool
    last_used: float | None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w` -> seconds; for `token create --expires`."""
    m = re.fullmatch(r"([1-9][0-9]{0,5})([mhdw])", text.strip())
    if not m:
        raise AuthError(f"{text!r} is not a duration such as 30d, 12h, 90m or 2w")
    return int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


class AuthStore:
    """Thread-safe access to the auth tables; one connection, short transactions."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        hasher: PasswordHasher | None = None,
        *,
        busy_timeout: float = 5.0,
    ):
        self.path = Path(path)
        self.busy_timeout = busy_timeout  # SQLite: how long a write waits for a lock
        self.hasher = hasher or PasswordHasher()
        # Verifying against this when the user does not exist costs the same time as a
        # real check, so response time does not tell which user names exist.
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self._url = str(path) if is_url(path) else None
        self._ident: tuple[int, int] | None = None
        self._db: sqlite3.Connection | None = None
        if self._url is not None:  # PostgreSQL: same SQL, tables from `logtorukun db upgrade`
            self._db = Database.get(self._url).connect()
            return
        if not self.path.exists():
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        with self._lock:
            self._conn()

    def _conn(self) -> sqlite3.Connection:
        """The connection, re-opened if the file at the path is another one now (moved
        back or restored after being taken away: see audit/store.py). Under the lock."""
        if self._url is not None and self._db is not None:
            return self._db  # PostgreSQL: no file to watch
        try:
            st = os.stat(self.path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if self._db is not None and ident == self._ident:
            return self._db
        if self._db is not None:  # let go of the old file (and its WAL) at once
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if ident is None:
            raise AuthError(f"{self.path}: the user database is not there (moved or deleted)")
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
        except sqlite3.Error as exc:
            raise AuthError(f"{self.path}: cannot open the user database ({exc})") from None
        self._db, self._ident = db, ident
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- users ------------------------------------------------------------------------

    def add_user(self, name: str, roles: list[str], password: str | None) -> User:
        if not USER_NAME.fullmatch(name):
            raise AuthError(f"{name!r}: a user name is letters, digits, '.', '_', '@' or '-'")
        if not roles:
            raise AuthError("give the user at least one --role")
        if password is not None and len(password) < 8:
            raise AuthError("a password needs at least 8 characters")
        digest = self.hasher.hash(password) if password is not None else None
        with self._lock:
            try:
                self._conn().execute(
                    "INSERT INTO auth_users (name, password_hash, roles, created) VALUES (?,?,?,?)",
                    (name, digest, json.dumps(sorted(set(roles))), time.time()),
                )
            except sqlite3.IntegrityError:
                raise AuthError(f"user {name!r} exists already") from None
        return User(name, tuple(sorted(set(roles))), has_password=digest is not None)

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise AuthError("a password needs at least 8 characters")
        digest = self.hasher.hash(password)
        with self._lock:
            cur = self._conn().execute(
                "UPDATE auth_users SET password_hash = ? WHERE name = ?", (digest, name)
            )
            if cur.rowcount == 0:
                raise AuthError(f"no user {name!r}")
            self._conn().execute("DELETE FROM auth_sessions WHERE user = ?", (name,))

    def remove_user(self, name: str) -> None:
        """Removes the user, their sessions and tokens: effective on the next request."""
        with self._lock:
            self._conn().execute("BEGIN IMMEDIATE")
            cur = self._conn().execute("DELETE FROM auth_users WHERE name = ?", (name,))
            self._conn().execute("DELETE FROM auth_sessions WHERE user = ?", (name,))
            self._conn().execute("UPDATE auth_tokens SET revoked = 1 WHERE user = ?", (name,))
            self._conn().execute("COMMIT")
        if cur.rowcount == 0:
            raise AuthError(f"no user {name!r}")

    def set_disabled(self, name: str, disabled: bool) -> None:
        """A disabled user keeps their records but cannot sign in or use sessions or
        tokens; open follows end at their next re-check."""
        with self._lock:
            cur = self._conn().execute(
                "UPDATE auth_users SET disabled = ? WHERE name = ?", (int(disabled), name)
            )
        if cur.rowcount == 0:
            raise AuthError(f"no user {name!r}")

    def set_roles(self, name: str, roles: list[str]) -> User:
        """Replace the user's roles: effective on the next request (and follow re-check)."""
        if not roles:
            raise AuthError("give the user at least one --role")
        with self._lock:
            cur = self._conn().execute(
                "UPDATE auth_users SET roles = ? WHERE name = ?",
                (json.dumps(sorted(set(roles))), name),
            )
        if cur.rowcount == 0:
            raise AuthError(f"no user {name!r}")
        user = self.get_user(name)
        assert user is not None
        return user

    def get_user(self, name: str) -> User | None:
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT name, roles, disabled, password_hash IS NOT NULL FROM auth_users "
                    "WHERE name = ?",
                    (name,),
                )
                .fetchone()
            )
        return _user(row) if row else None

    def users(self) -> list[User]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT name, roles, disabled, password_hash IS NOT NULL FROM auth_users "
                    "ORDER BY name"
                )
                .fetchall()
            )
        return [_user(r) for r in rows]

    def check_password(self, name: str, password: str) -> User | None:
        """The user if the password is right; the same work is done when it is not."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT name, roles, disabled, password_hash IS NOT NULL, password_hash "
                    "FROM auth_users WHERE name = ?",
                    (name,),
                )
                .fetchone()
            )
        digest = row[4] if row and row[4] else self._dummy
        try:
            self.hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or not row[4] or row[2]:
            return None
        if self.hasher.check_needs_rehash(digest):
            with contextlib.suppress(AuthError):
                self.set_password(name, password)
        return _user(row[:4])

    # -- sessions ---------------------------------------------------------------------

    def create_session(self, user: str, hours: float, via: str = "password") -> tuple[str, str]:
        """A new session; returns (cookie value, CSRF token). Only the id's hash is kept."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._conn().execute(
                "INSERT INTO auth_sessions (id_hash, user, csrf, created, expires, via) "
                "VALUES (?,?,?,?,?,?)",
                (_sha(sid), user, csrf, now, now + hours * 3600, via),
            )
            # Housekeeping, cheap with the primary key: expired sessions go.
            self._conn().execute("DELETE FROM auth_sessions WHERE expires < ?", (now,))
        return sid, csrf

    def session(self, sid: str) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT u.name, u.roles, u.disabled, u.password_hash IS NOT NULL, s.csrf, "
                    "s.expires, s.via FROM auth_sessions s JOIN auth_users u ON u.name = s.user "
                    "WHERE s.id_hash = ?",
                    (_sha(sid),),
                )
                .fetchone()
            )
        if row is None or row[5] < time.time() or row[2]:
            return None
        return Session(_user(row[:4]), row[4], row[5], row[6])

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM auth_sessions WHERE id_hash = ?", (_sha(sid),))

    # -- tokens -----------------------------------------------------------------------

    def create_token(self, user: str, expires_in: float | None) -> tuple[str, TokenInfo]:
        """Returns the token (shown once, never stored) and its record."""
        if self.get_user(user) is None:
            raise AuthError(f"no user {user!r}")
        tid = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{tid}_{secrets.token_urlsafe(32)}"
        now = time.time()
        expires = now + expires_in if expires_in else None
        with self._lock:
            self._conn().execute(
                "INSERT INTO auth_tokens (id, user, hash, created, expires) VALUES (?,?,?,?,?)",
                (tid, user, _sha(token), now, expires),
            )
        return token, TokenInfo(tid, user, now, expires, False, None)

    def token_user(self, token: str) -> tuple[User | None, str | None, str]:
        """(user, token id, reason): user is None when the token is not valid now."""
        m = _TOKEN.fullmatch(token)
        if not m:
            return None, None, "malformed token"
        tid = m.group(1)
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT t.hash, t.expires, t.revoked, u.name, u.roles, u.disabled, "
                    "u.password_hash IS NOT NULL FROM auth_tokens t "
                    "LEFT JOIN auth_users u ON u.name = t.user WHERE t.id = ?",
                    (tid,),
                )
                .fetchone()
            )
        if row is None or not secrets.compare_digest(row[0], _sha(token)):
            return None, tid, "unknown token"
        if row[2]:
            return None, tid, "token revoked"
        if row[1] is not None and row[1] < time.time():
            return None, tid, "token expired"
        if row[3] is None or row[5]:
            return None, tid, "token's user no longer exists"
        return _user(row[3:7]), tid, "token valid"

    def token_state(self, tid: str) -> tuple[User | None, str]:
        """(user, reason) for a token already verified once, by id: what a long-lived
        stream re-checks (revoked, expired, user removed or disabled)."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT t.expires, t.revoked, u.name, u.roles, u.disabled, "
                    "u.password_hash IS NOT NULL FROM auth_tokens t "
                    "LEFT JOIN auth_users u ON u.name = t.user WHERE t.id = ?",
                    (tid,),
                )
                .fetchone()
            )
        if row is None:
            return None, "token removed"
        # The user first: removing a user also revokes their tokens, and "removed" is
        # the reason that matters.
        if row[2] is None:
            return None, "token's user no longer exists"
        if row[4]:
            return None, "token's user is disabled"
        if row[1]:
            return None, "token revoked"
        if row[0] is not None and row[0] < time.time():
            return None, "token expired"
        return _user(row[2:6]), "token valid"

    def touch_token(self, tid: str) -> None:
        with self._lock:
            self._conn().execute(
                "UPDATE auth_tokens SET last_used = ? WHERE id = ?", (time.time(), tid)
            )

    def revoke_token(self, tid: str) -> None:
        if tid.startswith(TOKEN_PREFIX):
            m = _TOKEN.fullmatch(tid)
            tid = m.group(1) if m else tid
        with self._lock:
            cur = self._conn().execute("UPDATE auth_tokens SET revoked = 1 WHERE id = ?", (tid,))
        if cur.rowcount == 0:
            raise AuthError(f"no token {tid!r} (give the id shown by `token list`)")

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        sql = "SELECT id, user, created, expires, revoked, last_used FROM auth_tokens"
        args: tuple[str, ...] = ()
        if user:
            sql += " WHERE user = ?"
            args = (user,)
        with self._lock:
            rows = self._conn().execute(sql + " ORDER BY created", args).fetchall()
        return [TokenInfo(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]


def _user(row: tuple[object, ...] | list[object]) -> User:
    return User(
        name=str(row[0]),
        roles=tuple(json.loads(str(row[1]))),
        disabled=bool(row[2]),
        has_password=bool(row[3]),
    )
