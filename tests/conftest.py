"""Fixtures for tests that need real workers: sshd on loopback with the gate as forced command.

- `worker`: one shared worker for the session. Tests must leave it as they found it;
  after every test its sshd, policy, authorized_keys and host key are checked, and a
  test that changed them fails (and the worker is repaired for the next one). Change
  the policy only inside `with worker.policy(text):`.
- `make_worker(**kwargs)`: a fresh worker (see `Worker` for the arguments), started
  unless `start=False`; stopped and removed at teardown.
- `pg_server`: one real PostgreSQL for the session (tests/support/postgres.py);
  `pg_url`: a fresh, upgraded database on it, as the server's role sees it;
  `database`: parametrised over both backends, a SQLite path or a PostgreSQL URL.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.postgres import APP, OWNER, Postgres
from tests.support.sshd import Worker

# Fixtures that tests in more than one folder use.
pytest_plugins = ["tests.support.fleet"]


class MakeWorker(Protocol):
    def __call__(self, *, start: bool = True, **kwargs: Any) -> Worker: ...


class _Snapshot:
    """What a test must not change on the shared worker."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.files = {p: p.read_bytes() for p in self._paths()}

    def _paths(self) -> list[Path]:
        w = self.w
        pub = w.host_key.with_name(w.host_key.name + ".pub")
        return [w.policy_path, w.authorized_keys, w.known_hosts, w.host_key, pub]

    def check_and_repair(self) -> list[str]:
        w = self.w
        broken = [p.name for p, data in self.files.items() if _read(p) != data]
        for p, data in self.files.items():
            if p.name in broken:
                p.write_bytes(data)
        if not w.running:
            broken.append("sshd not running")
            w.stop()
            w.start()
        elif "ssh_host_ed25519_key" in broken:
            w.stop()  # sshd loads its host key at start: restart with the original
            w.start()
        return broken


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


_shared: _Snapshot | None = None


@pytest.fixture(scope="session")
def worker() -> Iterator[Worker]:
    global _shared
    w = Worker(name="shared")
    try:
        w.start()
        _shared = _Snapshot(w)
        yield w
    finally:
        _shared = None
        w.destroy()


@pytest.fixture(autouse=True)
def _shared_worker_intact() -> Iterator[None]:
    yield
    if _shared is not None:
        broken = _shared.check_and_repair()
        if broken:
            pytest.fail(
                f"this test changed the shared worker ({', '.join(broken)}); it was repaired."
                " Use `with worker.policy(...)` or the make_worker fixture instead."
            )


@pytest.fixture
def make_worker() -> Iterator[MakeWorker]:
    made: list[Worker] = []

    def make(*, start: bool = True, **kwargs: Any) -> Worker:
        w = Worker(**kwargs)
        made.append(w)
        if start:
            w.start()
        return w

    try:
        yield make
    finally:
        for w in made:
            w.destroy()


@contextlib.contextmanager
def _running_postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    with _running_postgres() as pg:
        yield pg


@pytest.fixture
def own_pg() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own, to stop and start."""
    with _running_postgres() as pg:
        yield pg


_databases = itertools.count(1)


def new_pg_database(pg: Postgres) -> str:
    """A fresh database with the schema applied by its owner; the server role's URL."""
    from logtorukun.cli.database import upgrade

    name = f"t{next(_databases)}"
    pg.create_database(name)
    upgrade(pg.dsn(OWNER, name), APP)
    return pg.dsn(APP, name)


@pytest.fixture
def pg_url(pg_server: Postgres) -> Iterator[str]:
    from logtorukun.db.postgres import close_pool

    url = new_pg_database(pg_server)
    try:
        yield url
    finally:
        close_pool(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    """Where the server keeps its state, on each backend: behaviour must match."""
    if request.param == "sqlite":
        yield tmp_path / "logtorukun.db"
    else:
        yield request.getfixturevalue("pg_url")
