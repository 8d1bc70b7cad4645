"""Two `logtorukun serve` processes on one PostgreSQL, as behind a load balancer: one
audit chain, one set of users, sessions and tokens; killing one mid-burst loses nothing
that was answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from logtorukun.audit.store import AuditStore
from logtorukun.ops.system import die_with_parent
from logtorukun.web.auth import AuthStore
from tests.support.sshd import Worker
from tests.web.support import FAST_HASHER, PASSWORD, USERS, free_port, login, write_config
from tests.web.test_access_matrix import CAPS, HOSTS, expected, refusal, request

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Instance:
    config: Path
    url: str
    proc: subprocess.Popen[bytes]

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logtorukun", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def serve(directory: Path, worker: Worker, database: str) -> Instance:
    directory.mkdir()
    port = free_port()
    config = write_config(directory, worker, database=database, listen=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "logtorukun", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Instance(config, url, proc)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"serve did not start: {err[-2000:]}")
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path, web_worker: Worker, pg_url: str) -> Iterator[tuple[Instance, Instance]]:
    auth = AuthStore(pg_url, hasher=FAST_HASHER)
    for name, roles in USERS.items():
        auth.add_user(name, roles, PASSWORD)
    auth.close()
    a = serve(tmp_path / "a", web_worker, pg_url)
    try:
        b = serve(tmp_path / "b", web_worker, pg_url)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_access_matrix_and_audit_through_either_instance(
    pair: tuple[Instance, Instance], web_worker: Worker, pg_url: str
) -> None:
    """Every cell of tests/web/test_access_matrix.py, the instances taking turns."""
    root = web_worker.root
    sources = [str(root / "app.log"), str(root / "app.log.1"), "/var/log/syslog"]
    clients = {(u, i): inst.client() for u in USERS for i, inst in enumerate(pair)}
    wrong: list[str] = []
    cells = 0
    try:
        for (user, _), c in clients.items():
            login(c, user)
        for user in USERS:
            for host in HOSTS:
                for source in sources:
                    for cap in CAPS:
                        c = clients[(user, cells % 2)]
                        cells += 1
                        status = request(c, host, source, cap)
                        allow = expected(user, host, source, cap, root)
                        want = 200 if allow else refusal(user, host)
                        if status != want:
                            wrong.append(f"{user} {cap} {host}:{source} -> {status}, want {want}")
    finally:
        for c in clients.values():
            c.close()
    assert cells == len(USERS) * len(HOSTS) * len(sources) * len(CAPS)
    assert not wrong, "\n".join(wrong)
    done = cli(pair[0].config, "audit", "verify")
    assert done.returncode == 0 and done.stdout.startswith("audit chain OK"), done.stderr
    with AuditStore(pg_url, readonly=True) as store:
        kinds = ("read", "follow_start", "refused")
        decided = [r for r in store.iter_records() if r.event in kinds]
    allowed = sum(
        expected(u, h, s, cap, root) for u in USERS for h in HOSTS for s in sources for cap in CAPS
    )
    assert sum(r.decision == "allow" for r in decided) == allowed
    assert sum(r.decision == "deny" for r in decided) >= cells - allowed


def test_sign_out_and_revocation_reach_the_other_instance(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb:
        login(ca, "olivia")
        cb.cookies = ca.cookies  # the load balancer sends the next request to B
        me = cb.get("/api/me")
        assert me.status_code == 200 and me.json()["user"] == "olivia"
        csrf = me.json()["csrf"]
        assert ca.post("/logout", data={"csrf": csrf}).status_code in (200, 303)
        assert cb.get("/api/me").status_code == 401
    token = cli(a.config, "token", "create", "olivia").stdout.strip().split()[-1]
    assert token.startswith("ltk_")
    auth = {"authorization": f"Bearer {token}"}
    with a.client(headers=auth) as ca, b.client(headers=auth) as cb:
        assert ca.get("/api/me").status_code == 200 and cb.get("/api/me").status_code == 200
        revoked = cli(b.config, "token", "revoke", token)
        assert revoked.returncode == 0, revoked.stderr
        for c in (ca, cb):
            r = c.get("/api/me")
            assert r.status_code == 401 and "revoked" in r.json()["reason"]


def _burst(
    inst: Instance, token: str, tag: str, n: int, answered: list[str], stop: threading.Event
) -> None:
    """n refused requests, each naming a host of its own (one record each, no worker);
    `answered`: the hosts of those that got an answer."""
    with inst.client(headers={"authorization": f"Bearer {token}"}) as c:
        for i in range(n):
            if stop.is_set():
                return
            host = f"h-{tag}-{i}"
            try:
                r = c.get(f"/api/hosts/{host}/sources")
            except httpx.HTTPError:
                return  # the instance is gone: this request was not answered
            assert r.status_code == 404, r.text
            answered.append(host)


def _run_burst(
    pair: tuple[Instance, Instance], token: str, per_writer: int, kill_after: int | None
) -> list[str]:
    a, b = pair
    answered: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_burst, args=((a, b)[i % 2], token, f"w{i}", per_writer, answered[i], stop)
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    try:
        if kill_after is not None:
            deadline = time.monotonic() + 120
            while len(answered[0]) < kill_after and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(a.proc.pid, signal.SIGKILL)  # mid-burst: writers 0 and 2 were on A
    finally:
        for t in threads:
            t.join(timeout=600)
        stop.set()
    assert not any(t.is_alive() for t in threads)
    return [h for part in answered for h in part]


def test_four_writers_on_two_instances_append_20000_records_in_one_chain(
    pair: tuple[Instance, Instance], pg_url: str
) -> None:
    a, _ = pair
    token = cli(a.config, "token", "create", "olivia").stdout.strip().split()[-1]
    answered = _run_burst(pair, token, 5000, kill_after=None)
    assert len(answered) == 20000
    done = cli(a.config, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    with AuditStore(pg_url, readonly=True) as store:
        hosts = {r.host for r in store.iter_records() if r.event == "refused"}
        report = store.verify()
    assert report.ok and report.records >= 20000
    assert hosts >= set(answered)


def test_kill_9_mid_burst_keeps_the_chain_and_every_answer_recorded(
    pair: tuple[Instance, Instance], pg_url: str
) -> None:
    a, b = pair
    token = cli(b.config, "token", "create", "olivia").stdout.strip().split()[-1]
    answered = _run_burst(pair, token, 1000, kill_after=300)
    assert a.proc.wait(timeout=10) == -signal.SIGKILL
    on_b = [h for h in answered if h.startswith(("h-w1-", "h-w3-"))]
    assert len(on_b) == 2000  # B went on alone
    with AuditStore(pg_url, readonly=True) as store:
        report = store.verify()
        hosts = {r.host for r in store.iter_records() if r.event == "refused"}
    assert report.ok, report.summary()
    missing = set(answered) - hosts
    assert not missing, f"{len(missing)} answered requests have no audit record"
    done = cli(b.config, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
