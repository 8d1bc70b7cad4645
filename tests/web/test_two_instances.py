"""Two `logtorukun serve` processes on one PostgreSQL, as behind a load balancer: one
audit chain, one set of users, sessions and tokens; killing one mid-burst loses nothing
that was answered."""

from __future__ import annotations

import contextlib
import itertools
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
from tests.web.support import FAST_HASHER, PASSWORD, USERS, cli, free_port, login, write_config
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


def serve(directory: Path, worker: Worker, database: str, **settings: object) -> Instance:
    """Start `logtorukun serve`; `ready()` waits until it answers."""
    directory.mkdir()
    port = free_port()
    config = write_config(
        directory, worker, database=database, listen=f"127.0.0.1:{port}", **settings
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "logtorukun", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    return Instance(config, f"http://127.0.0.1:{port}", proc)


def ready(inst: Instance) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{inst.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if inst.proc.poll() is not None or time.monotonic() > deadline:
            inst.proc.kill()
            err = inst.proc.stderr.read().decode() if inst.proc.stderr else ""
            raise RuntimeError(f"serve did not start: {err[-2000:]}")
        time.sleep(0.05)


def new_token(pg_url: str, user: str = "olivia") -> str:
    """A bearer token, created the way `logtorukun token create` does (in this process)."""
    auth = AuthStore(pg_url, hasher=FAST_HASHER)
    try:
        return auth.create_token(user, None)[0]
    finally:
        auth.close()


@contextlib.contextmanager
def two(
    tmp_path: Path, worker: Worker, pg_url: str, **settings: object
) -> Iterator[tuple[Instance, Instance]]:
    auth = AuthStore(pg_url, hasher=FAST_HASHER)
    for name, roles in {**USERS, "oscar": ["ops"]}.items():  # oscar: a second ops user
        auth.add_user(name, roles, PASSWORD)
    auth.close()
    started: list[Instance] = []
    try:
        for name in ("a", "b"):  # both start at once: their start-ups overlap
            started.append(serve(tmp_path / name, worker, pg_url, **settings))
        for inst in started:
            ready(inst)
        yield started[0], started[1]
    finally:
        for inst in started:
            inst.stop()


@pytest.fixture
def pair(tmp_path: Path, web_worker: Worker, pg_url: str) -> Iterator[tuple[Instance, Instance]]:
    with two(tmp_path, web_worker, pg_url) as instances:
        yield instances


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
    done = cli("audit", "verify", config=pair[0].config)
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
    token = cli("token", "create", "olivia", config=a.config).stdout.strip().split()[-1]
    assert token.startswith("ltk_")
    auth = {"authorization": f"Bearer {token}"}
    with a.client(headers=auth) as ca, b.client(headers=auth) as cb:
        assert ca.get("/api/me").status_code == 200 and cb.get("/api/me").status_code == 200
        revoked = cli("token", "revoke", token, config=b.config)
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


def test_four_writers_on_two_instances_append_5000_records_in_one_chain(
    pair: tuple[Instance, Instance], pg_url: str
) -> None:
    """Appends of two processes interleave thousands of times in 5000 records (the
    append rate at scale is measured by bench/database.py, not here)."""
    a, _ = pair
    token = new_token(pg_url)
    answered = _run_burst(pair, token, 1250, kill_after=None)
    assert len(answered) == 5000
    done = cli("audit", "verify", config=a.config)
    assert done.returncode == 0, done.stdout + done.stderr
    with AuditStore(pg_url, readonly=True) as store:
        hosts = [r.host or "" for r in store.iter_records() if r.event == "refused"]
        report = store.verify()
    assert report.ok and report.records >= 5000
    assert set(hosts) >= set(answered)
    # in chain order, A's writers (w0, w2) and B's (w1, w3) took turns many times
    on_a = [h.startswith(("h-w0-", "h-w2-")) for h in hosts if h.startswith("h-w")]
    turns = sum(x != y for x, y in itertools.pairwise(on_a))
    assert turns > 100, turns


def test_kill_9_mid_burst_keeps_the_chain_and_every_answer_recorded(
    pair: tuple[Instance, Instance], pg_url: str
) -> None:
    a, b = pair
    token = new_token(pg_url)
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
    done = cli("audit", "verify", config=b.config)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rate_limit_throttle_and_follow_cap_count_across_instances(
    tmp_path: Path, web_worker: Worker, pg_url: str
) -> None:
    # 1 request a minute after a burst of 10; one follow per user
    with two(tmp_path, web_worker, pg_url, requests_per_minute=1, max_follows_per_user=1) as (a, b):
        token = new_token(pg_url)
        auth = {"authorization": f"Bearer {token}"}
        with a.client(headers=auth) as ca, b.client(headers=auth) as cb:
            codes = [(ca, cb)[i % 2].get("/api/me").status_code for i in range(20)]
        assert codes.count(200) == 10 and codes.count(429) == 10  # 20 with one bucket each

        with a.client() as ca, b.client() as cb:
            for i in range(5):  # failed sign-ins for one (user, address), on both
                assert login((ca, cb)[i % 2], "rita", "wrong password").status_code == 401
            r = login(cb, "rita")  # the right password, but the pair is throttled
            assert r.status_code == 429 and "Too many failed sign-ins" in r.text

        params = {"path": str(web_worker.root / "follow.log")}
        with a.client() as ca, b.client() as cb:
            login(ca, "oscar")  # a user of its own: olivia's budget is spent above
            cb.cookies = ca.cookies
            with ca.stream("GET", "/api/hosts/web1/follow", params=params) as first:
                assert first.status_code == 200
                second = cb.get("/api/hosts/web1/follow", params=params)
                assert second.status_code == 429 and "at most 1 live follows" in second.text
            deadline = time.monotonic() + 30  # A frees the slot when it sees the close
            while True:
                with cb.stream("GET", "/api/hosts/web1/follow", params=params) as again:
                    if again.status_code == 200 or time.monotonic() > deadline:
                        break
                time.sleep(0.1)
            assert again.status_code == 200


def test_a_token_revoked_on_one_instance_ends_its_follow_on_the_other(
    tmp_path: Path, web_worker: Worker, pg_url: str
) -> None:
    with two(tmp_path, web_worker, pg_url, follow_recheck_seconds=0.5) as (a, b):
        token = new_token(pg_url)
        params = {"path": str(web_worker.root / "follow.log")}
        with (
            a.client(headers={"authorization": f"Bearer {token}"}) as ca,
            ca.stream("GET", "/api/hosts/web1/follow", params=params) as r,
        ):
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines) == "retry: 3000" and next(lines) == "event: ready"
            assert cli("token", "revoke", token, config=b.config).returncode == 0
            deadline = time.monotonic() + 60  # heartbeats keep the loop moving
            events = []
            for line in lines:  # until A ends the follow
                events.append(line)
                if events[-2:-1] == ["event: end"] or time.monotonic() > deadline:
                    break
        ends = [i for i, e in enumerate(events) if e == "event: end"]
        assert ends, events
        assert "revoked" in events[ends[0] + 1]
