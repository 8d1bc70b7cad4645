"""A real PostgreSQL for tests: `initdb` in a temporary directory, `postgres` run as an
unprivileged user on a loopback port, killed with the test process at the latest.

Roles, as docs/operations.md sets them up for production:
  logtorukun_owner  owns the schema, runs `logtorukun db upgrade`
  logtorukun        what `serve` connects as: no UPDATE/DELETE/TRUNCATE on audit_log
Local connections are `trust` (only loopback and a private socket directory): the tests
are about the application's behaviour, not PostgreSQL's password handling.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from logtorukun.ops.system import die_with_parent, free_port, run

PG_USER = "logtorukun-pg"
START_TIMEOUT = 30.0
OWNER = "logtorukun_owner"
APP = "logtorukun"


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's `name` (Debian keeps them per major version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run ./dev test (it installs it)")
    return found[-1]


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (IndexError, ValueError):
        return 0


def ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        run(["/usr/sbin/useradd", "-r", "-M", "-s", "/usr/sbin/nologin", PG_USER], ok=(0, 9))
        return pwd.getpwnam(PG_USER)


class Postgres:
    """One server. `dsn(role)` for a role; `stop()`/`start()` to take it away and back."""

    def __init__(self) -> None:
        self.pw = ensure_pg_user()
        self.dir = Path(tempfile.mkdtemp(prefix="logtorukun-test-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self.dir.chmod(0o755)
            self.sock.mkdir()
            os.chown(self.dir, self.pw.pw_uid, self.pw.pw_gid)
            os.chown(self.sock, self.pw.pw_uid, self.pw.pw_gid)
            # A copy of one initdb per process: a fresh cluster in a fraction of the time.
            self._as_user(["/bin/cp", "-a", str(_template(self._as_user)), str(self.data)])
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _as_user(self, argv: list[str], *more: str) -> None:
        out = subprocess.run(
            [*argv, *more],
            user=self.pw.pw_uid,
            group=self.pw.pw_gid,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.dir,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {out.stderr.strip()}")

    def start(self) -> None:
        if self.running:
            return
        if not self.port:
            self.port = free_port()
        uid, gid = self.pw.pw_uid, self.pw.pw_gid
        main_thread = threading.current_thread() is threading.main_thread()

        def child() -> None:
            os.setgid(gid)
            os.setuid(uid)
            if main_thread:
                die_with_parent()

        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    pg_bin("postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sock),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=child,
                cwd=self.dir,
            )
        with _LOCK:
            _LIVE.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start; its log:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        out = subprocess.run(
            [pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return out.returncode == 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGKILL-free fast stop ("immediate"): the server is gone when this returns."""
        proc, self._proc = self._proc, None
        with _LOCK:
            _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, role: str = APP, database: str = "logtorukun") -> str:
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres", role: str = "postgres") -> str:
        out = subprocess.run(
            [
                "/usr/bin/psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                role,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str = "logtorukun") -> str:
        """A fresh database owned by OWNER, with the roles of docs/operations.md."""
        with contextlib.suppress(RuntimeError):
            self.psql(f"CREATE ROLE {OWNER} LOGIN")
        with contextlib.suppress(RuntimeError):
            self.psql(f"CREATE ROLE {APP} LOGIN")
        self.psql(f"CREATE DATABASE {name} OWNER {OWNER}")
        self.psql(
            f"REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO {APP}", name
        )
        return name


_LIVE: set[Postgres] = set()
_LOCK = threading.Lock()
_TEMPLATE: Path | None = None


def _template(as_user: Callable[..., None]) -> Path:
    """A data directory made by `initdb` once per process (removed at exit); clusters
    are copies of it, never started themselves."""
    global _TEMPLATE
    with _LOCK:
        if _TEMPLATE is None:
            parent = Path(tempfile.mkdtemp(prefix="logtorukun-test-pg-template-"))
            atexit.register(shutil.rmtree, parent, True)
            pw = ensure_pg_user()
            parent.chmod(0o755)
            os.chown(parent, pw.pw_uid, pw.pw_gid)
            data = parent / "data"
            as_user(
                [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                "-E",
                "UTF8",
                "--no-sync",
            )
            _TEMPLATE = data
        return _TEMPLATE


def _stop_all() -> None:
    with _LOCK:
        live = list(_LIVE)
    for pg in live:
        with contextlib.suppress(Exception):
            pg.stop()


atexit.register(_stop_all)
