"""No live follow outlives its credentials: sign-out, token revocation, user removal,
disabling, and a role change that removes the grant each end the open follow within the
re-check interval, with an `end` event and a `follow_end` record saying why. Against a
real `logtorukun serve` and a real sshd worker; the viewer's notice in Chromium."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from logtorukun.audit import AuditStore
from tests.support.sshd import Worker
from tests.web.support import Served, cli, own_log, running, served, sign_in, write_config

RECHECK = 0.5  # [server] follow_recheck_seconds for these tests
DEADLINE = 5.0  # the bound, with the default of 5 s


class Follow:
    """An SSE follow read by a thread; events land in a queue."""

    def __init__(self, c: httpx.Client, host: str, path: Path) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.c, self.url, self.path = c, f"/api/hosts/{host}/follow", str(path)
        self.closing = False
        self._sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        # From the position a tail ends at: every line appended after it is delivered.
        tail = self.c.get(self.url.replace("/follow", "/tail"), params={"path": self.path})
        params = {"path": self.path, "from": tail.json()["pos"]}
        try:
            with self.c.stream("GET", self.url, params=params, timeout=60) as r:
                self._sock = r.extensions["network_stream"].get_extra_info("socket")
                assert r.status_code == 200, r.read()
                name = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.events.put((name, json.loads(line[6:])))
        except httpx.HTTPError:
            if not self.closing:
                raise
        finally:
            self.events.put(None)

    def close(self) -> None:
        """Ends the stream now: the reading thread is woken by the socket's shutdown,
        not by the server's next heartbeat (15 s away)."""
        self.closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.c.close()

    def next(self, name: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            assert item is not None, f"stream closed while waiting for {name}"
            if item[0] == name:
                return item[1]


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(f"2024-12-17 14:00:00 INFO {text}\n")


@pytest.fixture
def log(web_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Path]:
    with own_log(web_worker, request, "2024-12-17 14:00:00 INFO first\n") as path:
        yield path


def _ended_by(srv: Served, log: Path, c: httpx.Client, revoke: Callable[[], object]) -> str:
    """Follow, see a line, revoke, and return the `end` event's reason."""
    f = Follow(c, "web1", log)
    f.next("ready")
    append(log, "before revocation")
    assert f.next("lines")["lines"] == ["2024-12-17 14:00:00 INFO before revocation"]
    revoke()
    t0 = time.monotonic()
    end = f.next("end", timeout=DEADLINE + 5)
    assert time.monotonic() - t0 < DEADLINE
    assert end["retry"] is False
    assert f.events.get(timeout=10) is None  # and the stream is closed
    return str(end["reason"])


USERS = {name: ["ops"] for name in ("sess", "tok", "gone", "off", "demoted")}
KEPT = {name: ["ops"] for name in ("keep", "tok2")}  # test_a_follow_that_keeps_...


@pytest.fixture(scope="module")
def srv(web_worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests below; each uses users of its own."""
    with served(
        tmp_path_factory.mktemp("revocation"),
        web_worker,
        {**USERS, **KEPT},
        follow_recheck_seconds=RECHECK,
    ) as s:
        yield s


def test_each_revocation_ends_the_open_follow(srv: Served, log: Path) -> None:
    cfg = srv.config_path
    sess = srv.session("sess")
    csrf = sess.get("/api/me").json()["csrf"]
    reasons = {
        "sess": _ended_by(srv, log, sess, lambda: _logout(sess, csrf)),
        "tok": _ended_by(
            srv,
            log,
            srv.client("tok"),
            lambda: _ok(cli("token", "revoke", srv.tokens["tok"], config=cfg)),
        ),
        "gone": _ended_by(
            srv, log, srv.client("gone"), lambda: _ok(cli("user", "remove", "gone", config=cfg))
        ),
        "off": _ended_by(
            srv, log, srv.client("off"), lambda: _ok(cli("user", "disable", "off", config=cfg))
        ),
        "demoted": _ended_by(
            srv,
            log,
            srv.client("demoted"),
            lambda: _ok(cli("user", "roles", "demoted", "--role", "reader", config=cfg)),
        ),
    }
    assert reasons["sess"].startswith("your session ended — sign in again")
    assert reasons["demoted"] == "your access to this log ended (your roles changed)"
    # Each follow's token or session no longer works for anything else either.
    assert srv.client("tok").get("/api/me").status_code == 401
    assert _ok(cli("user", "enable", "off", config=cfg))
    assert srv.client("off").get("/api/me").status_code == 200
    store = AuditStore(srv.config_path.parent / "logtorukun.db", readonly=True)
    try:
        deadline = time.monotonic() + 20  # each follow_end is written as its stream ends
        while True:
            ends = {x.user: x for x in store.query(event="follow_end", limit=100)}
            if set(USERS) <= set(ends) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert set(USERS) <= set(ends), sorted(map(str, ends))
        why = {u: str((ends[u].outcome or {}).get("reason")) for u in USERS}
        assert why["sess"] == "credentials re-checked: signed out, or the session expired"
        assert why["tok"] == "credentials re-checked: token revoked"
        assert why["gone"] == "credentials re-checked: token's user no longer exists"
        assert why["off"] == "credentials re-checked: token's user is disabled"
        assert why["demoted"].startswith("credentials re-checked: grant removed (no role grants")
    finally:
        store.close()


def _logout(c: httpx.Client, csrf: str) -> None:
    assert c.post("/logout", data={"csrf": csrf}).status_code == 303


def _ok(r: Any) -> bool:
    assert r.returncode == 0, r.stderr
    return True


def test_a_follow_that_keeps_its_credentials_goes_on(srv: Served, log: Path) -> None:
    """The re-check ends only what it must: a revoked token leaves another user's follow."""
    keep = Follow(srv.client("keep"), "web1", log)
    keep.next("ready")
    reason = _ended_by(
        srv,
        log,
        srv.client("tok2"),
        lambda: _ok(cli("token", "revoke", srv.tokens["tok2"], config=srv.config_path)),
    )
    assert "token revoked" in reason
    time.sleep(2 * RECHECK)  # two more re-checks pass the kept follow
    append(log, "after")
    got: list[str] = []
    while "2024-12-17 14:00:00 INFO after" not in got:
        got += keep.next("lines")["lines"]
    keep.close()


@pytest.mark.browser
def test_the_viewer_says_the_session_ended(
    page: Page, web_worker: Worker, tmp_path: Path, log: Path
) -> None:
    config = write_config(tmp_path, web_worker, follow_recheck_seconds=RECHECK)
    with running(config, {"olivia": ["ops"]}) as live:
        sign_in(page, live, "olivia", f"/view?host=web1&path={log}")
        # The page's first Load done (its status names the audit record), so that the
        # follow starts where it ended; then the server's `ready`: the follow is open on
        # the server and re-checked (the LIVE badge alone shows before the server
        # answered).
        expect(page.locator("#status")).to_contain_text("audit #")
        page.click("#follow")
        expect(page.locator("#live-badge")).to_have_text("LIVE")
        expect(page.locator("#status")).to_contain_text("Following web1:")
        append(log, "seen live")
        expect(page.locator("#log .line").last).to_contain_text("seen live")
        # Sign out in another tab of the same browser.
        other = page.context.new_page()
        other.goto(live.url + "/")
        other.click("#logout")
        expect(other.locator("h1")).to_have_text("Sign in")
        expect(page.locator("#notice")).to_contain_text(
            "Follow ended: your session ended — sign in again", timeout=DEADLINE * 1000
        )
        append(log, "after sign-out")
        page.wait_for_timeout(int(3 * RECHECK * 1000))
        assert "after sign-out" not in page.locator("#log").inner_text()
