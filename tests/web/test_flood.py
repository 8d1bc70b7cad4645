"""Anonymous and failed-authentication floods against a real `logtorukun serve`: the
audit trail grows by a bounded number of records, signed-in users keep reading, and
sign-in throttling cannot be turned into a lock-out of a real user."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx

from logtorukun.audit import AuditStore
from tests.support.sshd import Worker
from tests.web.support import PASSWORD, served

FLOOD = 10_000
CONNECTIONS = 4
BUDGET = 10  # failures_per_minute: answered and recorded one by one per address

# A raw HTTP/1.1 keep-alive client: cheap enough that 10,000 requests take seconds.
FLOODER = textwrap.dedent(
    """
    import asyncio, sys, collections
    port, per_conn, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    REQ = (b"GET /api/hosts/web1/tail?path=/x HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
           b"Authorization: Bearer ltk_0123456789ab_" + b"A" * 43 + b"\\r\\n\\r\\n")
    codes = collections.Counter()

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(per_conn):
            w.write(REQ)
            head = await r.readuntil(b"\\r\\n\\r\\n")
            codes[int(head.split(b" ", 2)[1])] += 1
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await r.readexactly(length)
        w.close()

    async def main():
        await asyncio.gather(*(one() for _ in range(conns)))
    asyncio.run(main())
    print(" ".join(f"{k}:{v}" for k, v in sorted(codes.items())))
    """
)


def test_a_bogus_token_flood_adds_a_bounded_number_of_records(
    web_worker: Worker, tmp_path: Path
) -> None:
    users = {"olivia": ["ops"]}
    with served(tmp_path, web_worker, users, failures_per_minute=BUDGET) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        before = AuditStore(tmp_path / "logtorukun.db", readonly=True)
        start_seq = before.head().seq if before.head() else 0  # type: ignore[union-attr]
        before.close()
        reads: list[int] = []
        stop = threading.Event()

        def reader() -> None:
            with srv.client("olivia") as c:
                while not stop.is_set() and len(reads) < 2000:
                    r = c.get("/api/hosts/web1/tail", params={"path": str(web_worker.app_log)})
                    reads.append(r.status_code)
                    time.sleep(0.05)

        t = threading.Thread(target=reader)
        t.start()
        t0 = time.monotonic()
        try:
            out = subprocess.run(
                [sys.executable, "-c", FLOODER, str(port), str(FLOOD // CONNECTIONS), "4"],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            ).stdout.split()
        finally:
            stop.set()
            t.join(60)
        elapsed = time.monotonic() - t0
        codes = {int(k): int(v) for k, v in (x.split(":") for x in out)}
        assert sum(codes.values()) == FLOOD
        assert set(codes) <= {401, 429} and codes.get(429, 0) > 0
        # Signed-in reads went on during the flood.
        assert len(reads) >= 5 and set(reads) == {200}, reads
        r = srv.client().get("/api/me", headers={"authorization": "Bearer ltk_" + "x" * 56})
        assert r.status_code == 429 and "try again in" in r.json()["reason"]
    # The server has stopped (SIGTERM): the open interval's summary is written too.
    store = AuditStore(tmp_path / "logtorukun.db", readonly=True)
    try:
        new = store.query(after_seq=start_seq, order="asc", limit=None)
        anon = [x for x in new if x.user is None]
        one_by_one = [x for x in anon if x.event == "refused"]
        summaries = [x for x in anon if x.event == "auth_failures"]
        intervals = int(elapsed // 60) + 2  # intervals the flood could touch
        assert len(anon) <= (BUDGET + 1) * intervals, len(anon)
        assert all(x.params["status"] == 401 for x in one_by_one)
        assert all(x.client == "127.0.0.1" for x in anon)
        # Every request of the flood (and the probe after it) is accounted for.
        counted = sum(int(x.params["count"]) for x in summaries)
        assert len(one_by_one) + counted == FLOOD + 1
        assert codes.get(401, 0) == len(one_by_one)
    finally:
        store.close()


def _login(c: httpx.Client, user: str, password: str, address: str) -> int:
    xff = {"x-forwarded-for": address}
    form = c.get("/login", headers=xff)
    pre = form.cookies.get("ltk_pre") or c.cookies.get("ltk_pre")
    r = c.post(
        "/login",
        data={"user": user, "password": password, "csrf": pre, "next": "/"},
        headers=xff,
    )
    c.cookies.clear()
    return r.status_code


def test_failed_sign_ins_from_one_address_do_not_lock_the_user_out(
    web_worker: Worker, tmp_path: Path
) -> None:
    """Per (user, address) 5 failures; per user 100 from all addresses together."""
    users = {"olivia": ["ops"]}
    with (
        served(tmp_path, web_worker, users, trusted_proxies=["127.0.0.1"]) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        attacker, victim = "192.0.2.66", "198.51.100.7"
        statuses = [_login(c, "olivia", "wrong password", attacker) for _ in range(7)]
        assert statuses == [401] * 5 + [429] * 2
        # Even the right password is refused from the attacker's address now.
        assert _login(c, "olivia", PASSWORD, attacker) == 429
        # More addresses guessing: 95 failures in all, still under the per-user cap...
        for i in range(1, 19):
            for _ in range(5):
                assert _login(c, "olivia", "wrong password", f"192.0.2.{i}") == 401
        # ...so the real user, from her own address, signs in.
        assert _login(c, "olivia", PASSWORD, victim) == 303
        # The 100th failure reaches the cap: guessing spread over 20 addresses stops
        # (and so does the user's own sign-in, until the window moves on).
        for _ in range(5):
            assert _login(c, "olivia", "wrong password", "192.0.2.19") == 401
        assert _login(c, "olivia", PASSWORD, victim) == 429
    store = AuditStore(tmp_path / "logtorukun.db", readonly=True)
    try:
        failed = store.query(event="login_failed", limit=1000)
        throttled = [x for x in failed if (x.reason or "").startswith("throttled")]
        assert {x.client for x in throttled} == {attacker, victim}
        assert len([x for x in failed if x.reason == "wrong user name or password"]) == 100
    finally:
        store.close()
