"""The audit database taken away under two running `logtorukun serve` instances:
deleted, renamed, replaced or on a read-only file system, every read is refused (503)
and /healthz says 503 on both; put back, both serve again without a restart."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.support.sshd import Worker
from tests.web.support import PY, Served, cli, free_port, served


@contextlib.contextmanager
def second_instance(srv: Served) -> Iterator[str]:
    """Another `serve` on the same config and database (as behind a load balancer)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *(PY, "-m", "logtorukun", "--config", str(srv.config_path), "serve"),
            *("--listen", f"127.0.0.1:{port}", "--log-level", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _health(url) == 200)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _health(url: str) -> int:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _until(cond: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_the_store_taken_away_fails_closed_and_recovers(web_worker: Worker, tmp_path: Path) -> None:
    db = tmp_path / "data" / "logtorukun.db"
    db.parent.mkdir()
    with served(tmp_path, web_worker, {"olivia": ["ops"]}, database=str(db)) as srv:
        with second_instance(srv) as url2:
            c1 = srv.client("olivia")
            c2 = httpx.Client(base_url=url2, headers=dict(c1.headers), timeout=30)
            app: dict[str, str | int] = {"path": str(web_worker.app_log), "lines": 3}

            def refused(why: str) -> None:
                for url, c in ((srv.url, c1), (url2, c2)):
                    assert _health(url) == 503, why
                    for route in ("/api/hosts/web1/tail", "/api/hosts"):
                        r = c.get(route, params=app if "tail" in route else None)
                        assert r.status_code == 503, (why, r.text)
                        assert str(tmp_path) not in r.text and "2024-12-17" not in r.text

            def serving() -> None:
                for url, c in ((srv.url, c1), (url2, c2)):
                    _until(lambda url=url: _health(url) == 200)  # type: ignore[misc]
                    assert c.get("/api/hosts/web1/tail", params=app).status_code == 200

            serving()
            # Renamed away, then moved back.
            moved = tmp_path / "moved.db"
            db.rename(moved)
            refused("renamed")
            moved.rename(db)
            serving()
            # Deleted; a backup taken just before is restored.
            backup = tmp_path / "backup.db"
            with sqlite3.connect(db) as src, sqlite3.connect(backup) as dst:
                src.backup(dst)
            db.unlink()
            refused("deleted")
            # An empty database in its place is not the trail: still refused.
            sqlite3.connect(db).close()
            refused("replaced by an empty file")
            db.unlink()
            # Restoring a copy: its stale WAL files go first (docs/operations.md).
            for stale in (f"{db}-wal", f"{db}-shm"):
                Path(stale).unlink(missing_ok=True)
            shutil.copyfile(backup, db)
            serving()
            # The file system goes read-only (a read-only bind mount over the directory).
            d = str(db.parent)
            subprocess.run(["mount", "--bind", d, d], check=True)
            try:
                subprocess.run(["mount", "-o", "remount,bind,ro", d, d], check=True)
                refused("read-only")
            finally:
                subprocess.run(["umount", d], check=True)
            serving()
            c2.close()
        log = srv.server_log()
    assert "was deleted or renamed" in log and "read-only file system" in log
    assert "is back; serving again" in log
    r = cli("audit", "verify", config=srv.config_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_serving_store_checkpoints_to_its_sinks(web_worker: Worker, tmp_path: Path) -> None:
    copy = tmp_path / "siem.jsonl"
    with (
        served(
            tmp_path, web_worker, {"olivia": ["ops"]}, audit_jsonl=str(copy), checkpoint_every=10
        ) as srv,
        srv.client("olivia") as c,
    ):
        for _ in range(8):  # two records each
            assert c.get(
                "/api/hosts/web1/tail", params={"path": str(web_worker.app_log)}
            ).is_success
    # Stopped (SIGTERM): a last checkpoint was sent at shutdown.
    reasons = [
        json.loads(x)["checkpoint"]["reason"]
        for x in copy.read_text().splitlines()
        if x.startswith('{"checkpoint"')
    ]
    assert reasons[0] == "every 10 records" and reasons[-1] == "shutdown"
    r = cli("audit", "verify", "--checkpoints", str(copy), config=srv.config_path)
    assert r.returncode == 0, r.stdout
    db = sqlite3.connect(tmp_path / "logtorukun.db")
    head = db.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute("DELETE FROM audit_log WHERE seq > ?", (head - 3,))
    db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit_log'", (head - 3,))
    db.commit()
    db.close()
    r = cli("audit", "verify", "--checkpoints", str(copy), config=srv.config_path)
    assert r.returncode == 1
    assert f"a checkpoint names seq {head} but the store ends at seq {head - 3}" in r.stdout
