"""A real web server for tests: uvicorn on 127.0.0.1 in a thread, a real sshd worker
behind it, a config naming that worker under several host names and roles.

Hosts (all the same sshd, so access decisions are the web server's alone):
  web1 (labels prod, web), web2 (labels web), db1 (labels prod, db), down (nothing
  listens there: unreachable).
Roles:
  ops      web* and label:web (so: web1, web2, down), all files, tail/search/follow/download
  reader   web1 only, app.log only, tail only
  dbsearch label:db, *.log, search only
  auditor  audit capability, no hosts
  nothing  grants nothing
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from playwright.sync_api import Browser, Page, Route, expect

from logtorukun.audit import AuditStore
from logtorukun.audit.records import AuditRecord, AuditRef
from logtorukun.config import Config, load_config
from logtorukun.web.app import create_app
from logtorukun.web.auth import AuthStore
from tests.support.sshd import Worker

PASSWORD = "correct horse battery"
# Fast argon2 for tests (the server's default costs ~50 ms and 64 MiB per check).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
USERS = {
    "olivia": ["ops"],
    "rita": ["reader"],
    "dan": ["dbsearch"],
    "alice": ["auditor"],
    "nobody": ["nothing"],
    "both": ["reader", "auditor"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, worker: Worker, **server: Any) -> Path:
    root = worker.root
    dead = free_port()
    settings = {
        "listen": "127.0.0.1:0",
        "database": str(directory / "logtorukun.db"),
        "secure_cookies": False,
        "requests_per_minute": 100000,
        # Many tests fail to sign in on purpose, all from 127.0.0.1; test_flood.py
        # tests this budget with its default.
        "failures_per_minute": 100000,
        **server,
    }
    lines = ["[server]"]
    for k, v in settings.items():
        lines.append(f"{k} = {_toml(v)}")
    for name, labels, port in (
        ("web1", ["prod", "web"], worker.port),
        ("web2", ["web"], worker.port),
        ("db1", ["prod", "db"], worker.port),
        ("down", ["web"], dead),
    ):
        lines += [
            "",
            "[[host]]",
            f'name = "{name}"',
            'address = "127.0.0.1"',
            f"port = {port}",
            f'user = "{worker.user}"',
            f"key = {_toml(str(worker.client_key))}",
            f"known_hosts = {_toml(str(worker.known_hosts))}",
            f"labels = {_toml(labels)}",
            "connect_timeout = 3.0",
            "request_timeout = 20.0",
        ]
    roles = [
        ("ops", ["web*", "label:web"], [f"{root}/*"], ["tail", "search", "follow", "download"]),
        ("reader", ["web1"], [f"{root}/app.log"], ["tail"]),
        ("dbsearch", ["label:db"], [f"{root}/*.log"], ["search"]),
        ("auditor", [], [], ["audit"]),
        ("nothing", [], [], []),
    ]
    for name, hosts, sources, caps in roles:
        lines += [
            "",
            "[[role]]",
            f'name = "{name}"',
            f"hosts = {_toml(hosts)}",
            f"sources = {_toml(sources)}",
            f"capabilities = {_toml(caps)}",
        ]
    path = directory / "server.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def with_hung_host(path: Path, worker: Worker, port: socket.socket) -> Path:
    """The config at `path` plus host web-hung (label-less, matched by `web*`) at a port
    that accepts and never answers: its SSH handshake waits until the port is closed."""
    with path.open("a") as f:
        f.write(
            '\n[[host]]\nname = "web-hung"\naddress = "127.0.0.1"\n'
            f"port = {port.getsockname()[1]}\nuser = {_toml(worker.user)}\n"
            f"key = {_toml(str(worker.client_key))}\n"
            f"known_hosts = {_toml(str(worker.known_hosts))}\nconnect_timeout = 120.0\n"
        )
    return path


def _toml(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


@dataclass
class LiveServer:
    """A running server; `client(user)` gives an httpx client signed in as that user."""

    config: Config
    url: str
    app: Any
    thread: threading.Thread
    uv: uvicorn.Server
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def server(self) -> Any:
        return self.app.state.server

    @property
    def audit(self) -> AuditStore:
        store: AuditStore = self.server.audit
        return store

    def since(self, before: AuditRef | None, **match: Any) -> list[AuditRecord]:
        """The records of requests begun after `before`, oldest first.

        An end record of an earlier request (a follow's `follow_end` is written when the
        server notices the closed stream, whenever that is) is not one of them.
        """
        after = before.seq if before else 0
        recs = self.audit.query(after_seq=after, order="asc", limit=None, **match)
        return [r for r in recs if r.ref is None or r.ref > after]

    def end_of(self, start: int, timeout: float = 20) -> AuditRecord:
        """The end record of the request whose start record is `start`, once written."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.audit.query(after_seq=start, order="asc", limit=None):
                if r.ref == start:
                    return r
            assert time.monotonic() < deadline, f"no end record for audit record {start}"
            time.sleep(0.01)

    def quiet(self, timeout: float = 20) -> None:
        """Wait until every follow this server started has ended and written its end."""
        deadline = time.monotonic() + timeout
        while True:
            starts = {r.seq for r in self.audit.query(event="follow_start", limit=None)}
            ends = {r.ref for r in self.audit.query(event="follow_end", limit=None)}
            if starts <= ends and not self.server.hub.upstreams:
                return
            assert time.monotonic() < deadline, f"follows never ended: {sorted(starts - ends)}"
            time.sleep(0.01)

    def anon(self) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)
        self.clients.append(c)
        return c

    def client(self, user: str, password: str = PASSWORD) -> httpx.Client:
        c = self.anon()
        login(c, user, password)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.uv.should_exit = True
        self.thread.join(timeout=15)


def login(c: httpx.Client, user: str, password: str = PASSWORD) -> httpx.Response:
    form = c.get("/login")
    pre = form.cookies.get("ltk_pre") or c.cookies.get("ltk_pre")
    r = c.post("/login", data={"user": user, "password": password, "csrf": pre, "next": "/"})
    return r


def start_server(config_path: Path, users: dict[str, list[str]] | None = None) -> LiveServer:
    config = load_config(config_path)
    auth = AuthStore(config.server.database, hasher=FAST_HASHER)
    for name, roles in (USERS if users is None else users).items():
        with contextlib.suppress(Exception):
            auth.add_user(name, roles, PASSWORD)
    app = create_app(config, auth=auth)
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            proxy_headers=False,
            lifespan="on",
        )
    )
    # uvicorn installs no signal handlers outside the main thread (Server.capture_signals).
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web server did not start")
        time.sleep(0.01)
    return LiveServer(config, f"http://127.0.0.1:{port}", app, thread, uv)


@contextlib.contextmanager
def running(config_path: Path, users: dict[str, list[str]] | None = None) -> Iterator[LiveServer]:
    live = start_server(config_path, users)
    try:
        yield live
    finally:
        live.stop()


# ------------------------------------------------ a real `logtorukun serve` process

PY = sys.executable


def cli(*args: str, config: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`logtorukun --config CONFIG ARGS...` as an operator would run it."""
    return subprocess.run(
        [PY, "-m", "logtorukun", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Served:
    """`logtorukun serve` in its own process, on loopback; `tokens[user]` is a bearer."""

    config_path: Path
    url: str
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str]
    log: Path

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def session(self, user: str) -> httpx.Client:
        """A browser-like client signed in with a password (a session cookie)."""
        c = httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)
        r = login(c, user)
        assert r.status_code == 303, r.text
        return c

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def served(
    directory: Path,
    worker: Worker,
    users: dict[str, list[str]] | None = None,
    extra: str = "",
    **server: Any,
) -> Iterator[Served]:
    """A config in `directory` (plus `extra` TOML appended), users with tokens, and a
    running `logtorukun serve`; stopped with SIGTERM (a clean shutdown) at the end."""
    port = free_port()
    config_path = write_config(directory, worker, listen=f"127.0.0.1:{port}", **server)
    if extra:
        with config_path.open("a") as f:
            f.write("\n" + extra + "\n")
    config = load_config(config_path)
    auth = AuthStore(config.server.database, hasher=FAST_HASHER)
    tokens: dict[str, str] = {}
    try:
        for name, roles in (USERS if users is None else users).items():
            auth.add_user(name, roles, PASSWORD)
            tokens[name] = auth.create_token(name, None)[0]
    finally:
        auth.close()
    log = directory / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "logtorukun", "--config", str(config_path), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {log.read_text(errors='replace')}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /healthz in 30 s")
            time.sleep(0.05)
        yield Served(config_path, url, proc, tokens, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def own_log(worker: Worker, request: pytest.FixtureRequest, text: str) -> Iterator[Path]:
    """A log file of this test's own on `worker` (named after the test) holding `text`,
    removed afterwards."""
    path = worker.root / f"{request.node.name[:40]}.log"
    path.write_text(text)
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def new_page(browser: Browser, **context: Any) -> Iterator[Page]:
    """A page in a browser context of its own (1280x800 unless `context` says otherwise;
    any other `Browser.new_context` option too), closed with its context."""
    ctx = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context})
    pg = ctx.new_page()
    pg.set_default_timeout(15000)
    try:
        yield pg
    finally:
        ctx.close()


def sign_in(page: Page, live: LiveServer, user: str, next_url: str = "/") -> None:
    page.goto(live.url + next_url)
    expect(page.locator("h1")).to_have_text("Sign in")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def scroll_back(page: Page, done: Callable[[], bool], what: str, rounds: int = 40) -> None:
    """Scroll the viewer's log to its top, a page back at a time, until `done()`: each
    round waits for the top row to change (a page came) or for 5 s (none came)."""
    for _ in range(rounds):
        if done():
            return
        top = page.locator("#log .line").first.inner_text()
        page.locator("#log").evaluate("e => { e.scrollTop = 0; }")
        with contextlib.suppress(AssertionError):
            expect(page.locator("#log .line").first).not_to_have_text(top, timeout=5000)
    raise AssertionError(f"never got back to {what}")


def record_badge(page: Page) -> None:
    """Keep every text the LIVE badge takes (states can be shorter than a poll)."""
    page.evaluate("""() => {
        window.__badges = [];
        const b = document.getElementById("live-badge");
        new MutationObserver(() => window.__badges.push(b.textContent))
            .observe(b, { childList: true, characterData: true, subtree: true });
    }""")


class Held:
    """The browser's requests to URLs matching `pattern`, held back until `release()`:
    a test orders the page's events exactly (a script still loading, a Load still out)
    without changing anything on the server."""

    def __init__(self, page: Page, pattern: str) -> None:
        self.page, self.pattern = page, pattern
        self.routes: list[Route] = []
        page.route(pattern, self._hold)

    def _hold(self, route: Route) -> None:
        self.routes.append(route)

    def wait(self, timeout: float = 15) -> None:
        """Until the page has made such a request (it is now held)."""
        deadline = time.monotonic() + timeout
        while not self.routes:
            assert time.monotonic() < deadline, f"the page never requested {self.pattern}"
            self.page.wait_for_timeout(20)  # lets Playwright deliver the route

    def release(self) -> None:
        """Send what was held, and every later request, on to the server."""
        for route in self.routes:
            route.continue_()
        self.routes.clear()
        self.page.unroute(self.pattern, self._hold)
