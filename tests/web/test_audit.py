"""The audit trail as the web server writes it: a record for every action, tamper
evidence through `logtorukun audit verify`, fail closed, and survival of kill -9."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from logtorukun.audit import AuditStore
from tests.support.sshd import Worker
from tests.web.support import (
    PASSWORD,
    PY,
    LiveServer,
    cli,
    free_port,
    login,
    running,
    write_config,
)


def test_every_kind_of_action_is_recorded(live: LiveServer, web_worker: Worker) -> None:
    start = live.audit.head()
    c = live.anon()
    login(c, "alice", "wrong password")
    login(c, "alice")
    c.get("/api/audit", params={"user": "rita"})
    c.get("/api/audit/export", params={"format": "csv"})
    c.get("/api/hosts/web1/tail", params={"path": str(web_worker.app_log)})  # no grant
    csrf = c.get("/api/me").json()["csrf"]
    c.post("/logout", data={"csrf": csrf})
    recs = live.since(start)
    got = [(r.event, r.user, r.decision) for r in recs]
    assert got == [
        ("login_failed", None, "deny"),
        ("login", "alice", "allow"),
        ("audit_view", "alice", "allow"),
        ("export", "alice", "allow"),
        ("read_end", "alice", None),
        ("refused", "alice", "deny"),
        ("logout", "alice", "allow"),
    ]
    assert recs[0].params["name"] == "alice" and recs[0].client == "127.0.0.1"
    assert recs[2].params == {"user": "rita"}
    assert recs[4].outcome is not None and recs[4].outcome["records"] > 0
    assert all(r.user_agent and r.user_agent.startswith("python-httpx") for r in recs)


def test_audit_api_filters_and_is_for_auditors_only(live: LiveServer) -> None:
    live.client("rita").get("/api/hosts")
    r = live.client("rita").get("/api/audit")
    assert r.status_code == 403
    body = live.client("alice").get("/api/audit", params={"user": "rita", "limit": 5}).json()
    assert body["records"] and all(x["user"] == "rita" for x in body["records"])
    assert body["records"][0]["event"] == "refused"  # rita's own try at the audit trail
    deny = live.client("alice").get("/api/audit", params={"decision": "deny"}).json()
    assert deny["records"] and all(x["decision"] == "deny" for x in deny["records"])
    r = live.client("alice").get("/api/audit/export", params={"format": "jsonl"})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[0]["seq"] == 1 and all("hash" in x for x in lines)


def _make_records(config: Path, worker: Worker) -> None:
    with running(config, {"olivia": ["ops"]}) as srv:
        c = srv.client("olivia")
        for _ in range(4):
            c.get("/api/hosts/web1/tail", params={"path": str(worker.app_log), "lines": 1})


def _tamper(db: Path, how: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_update")  # what someone with the file can do
    conn.execute("DROP TRIGGER audit_log_no_delete")
    conn.execute("DROP TRIGGER audit_log_next_seq")
    if how == "edit":
        conn.execute("UPDATE audit_log SET user = 'someone-else' WHERE seq = 5")
    elif how == "delete":
        conn.execute("DELETE FROM audit_log WHERE seq = 5")
    elif how == "reorder":
        cols = [r[1] for r in conn.execute("PRAGMA table_info(audit_log)") if r[1] != "seq"]
        a = conn.execute(f"SELECT {','.join(cols)} FROM audit_log WHERE seq = 5").fetchone()
        b = conn.execute(f"SELECT {','.join(cols)} FROM audit_log WHERE seq = 6").fetchone()
        sets = ", ".join(f"{c} = ?" for c in cols)
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 5", b)
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 6", a)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("how", "kind"), [("edit", "edited"), ("delete", "deleted"), ("reorder", "reordered")]
)
def test_audit_verify_names_the_tampered_record(
    web_worker: Worker, tmp_path: Path, how: str, kind: str
) -> None:
    config = write_config(tmp_path, web_worker)
    _make_records(config, web_worker)
    ok = cli("audit", "verify", config=config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    db = tmp_path / "logtorukun.db"
    _tamper(db, how)
    bad = cli("audit", "verify", config=config)
    assert bad.returncode == 1
    assert f"seq 5: {kind}" in bad.stdout + bad.stderr


def test_unwritable_audit_trail_refuses_every_read(web_worker: Worker, tmp_path: Path) -> None:
    config = write_config(tmp_path, web_worker)
    with running(config, {"olivia": ["ops"]}) as srv:
        c = srv.client("olivia")
        path = {"path": str(web_worker.app_log)}
        assert c.get("/api/hosts/web1/tail", params=path).status_code == 200
        srv.audit.busy_timeout = 0.1
        assert srv.audit._writer is not None
        srv.audit._writer.execute("PRAGMA busy_timeout = 100")
        # Another process holds the write lock: no record can be committed.
        blocker = sqlite3.connect(tmp_path / "logtorukun.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            responses = [
                c.get("/api/hosts/web1/tail", params=path),
                c.get("/api/hosts/web1/grep", params={**path, "pattern": "ERROR"}),
                c.get("/api/hosts/web1/tail", params={**path, "download": "true"}),
                c.get("/api/hosts/web1/sources"),
                c.get("/api/hosts/web1/follow", params=path),
                c.get("/api/search", params={"path": "/**", "pattern": "x"}),
                c.get("/api/hosts"),
                login(srv.anon(), "olivia"),
            ]
            for r in responses:
                assert r.status_code == 503, (r.request.url, r.status_code)
                assert "audit trail cannot be written" in r.text
                assert "2024-12-17" not in r.text  # no log data
            assert srv.audit.write_failures >= len(responses)
            metrics = c.get("/metrics").text
            assert "logtorukun_audit_write_failures_total 0" not in metrics
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert c.get("/api/hosts/web1/tail", params=path).status_code == 200


def test_server_refuses_to_start_without_a_writable_audit_store(
    web_worker: Worker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, web_worker, database=str(tmp_path / "no/such/dir/x.db"))
    r = subprocess.run(
        [PY, "-m", "logtorukun", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "audit" in r.stderr and "x.db" in r.stderr


def test_cli_users_and_tokens(web_worker: Worker, tmp_path: Path) -> None:
    config = write_config(tmp_path, web_worker)
    r = cli(
        "user",
        "add",
        "carol",
        "--role",
        "ops",
        "--password-stdin",
        config=config,
        stdin="a long enough password\n",
    )
    assert r.returncode == 0, r.stderr
    assert (
        cli(
            "user",
            "add",
            "x",
            "--role",
            "nope",
            "--password-stdin",
            config=config,
            stdin="a long enough password\n",
        ).returncode
        == 2
    )
    assert "carol\tops" in cli("user", "list", config=config).stdout
    r = cli("token", "create", "carol", "--expires", "1d", config=config)
    token = r.stdout.strip()
    assert r.returncode == 0 and token.startswith("ltk_") and "shown only now" in r.stderr
    db = sqlite3.connect(tmp_path / "logtorukun.db")
    assert token not in str(db.execute("SELECT * FROM auth_tokens").fetchall())
    assert "a long enough" not in str(db.execute("SELECT * FROM auth_users").fetchall())
    db.close()
    with running(config, {}) as srv:
        h = {"authorization": f"Bearer {token}"}
        assert srv.anon().get("/api/me", headers=h).json()["user"] == "carol"
        tid = token.split("_")[1]
        assert cli("token", "revoke", tid, config=config).returncode == 0
        assert srv.anon().get("/api/me", headers=h).status_code == 401
        c = srv.client("carol", "a long enough password")
        assert c.get("/api/me").status_code == 200
        assert cli("user", "remove", "carol", config=config).returncode == 0
        assert c.get("/api/me").status_code == 401  # the session ended with the user


# ---------------------------------------------------------------------- kill -9


def _serve(config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [PY, "-m", "logtorukun", "--config", str(config), "serve", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("server did not come up")


def test_kill_9_mid_burst_leaves_a_valid_chain_with_every_response(
    web_worker: Worker, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, web_worker, listen=f"127.0.0.1:{port}")
    assert (
        cli(
            "user",
            "add",
            "olivia",
            "--role",
            "ops",
            "--password-stdin",
            config=config,
            stdin=PASSWORD + "\n",
        ).returncode
        == 0
    )
    token = cli("token", "create", "olivia", config=config).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(config)
    try:
        _wait_up(url, proc)
        received: list[dict[str, Any]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def burst() -> None:
            with httpx.Client(
                base_url=url, timeout=10, headers={"authorization": f"Bearer {token}"}
            ) as c:
                while not stop.is_set():
                    try:
                        r = c.get(
                            "/api/hosts/web1/tail",
                            params={"path": str(web_worker.app_log), "lines": 20},
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            received.append(r.json())

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(burst) for _ in range(8)]
            deadline = time.monotonic() + 30
            while len(received) < 150 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # mid-burst: requests are in flight
            proc.wait(10)
            stop.set()
            for f in futures:
                f.result()
        assert len(received) >= 150
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    r = cli("audit", "verify", config=config)
    assert r.returncode == 0, r.stdout + r.stderr
    store = AuditStore(tmp_path / "logtorukun.db", readonly=True)
    try:
        for body in received:
            rec = store.query(after_seq=body["audit"] - 1, order="asc", limit=1)[0]
            assert rec.seq == body["audit"] and rec.event == "read" and rec.decision == "allow"
            assert rec.user == "olivia" and rec.source == str(web_worker.app_log)
        # Restarted, the server appends to the same chain.
        proc = _serve(config)
        try:
            _wait_up(url, proc)
            r2 = httpx.get(url + "/api/hosts", headers={"authorization": f"Bearer {token}"})
            assert r2.status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    finally:
        store.close()
    assert cli("audit", "verify", config=config).returncode == 0
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
