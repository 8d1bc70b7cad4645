"""Fixtures for the web tests: one worker of our own (we add log files to it) and one
server for the session; tests that need their own server start one with `running()`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from tests.support.sshd import Worker
from tests.web.support import LiveServer, new_page, running, write_config

XSS_LINES = [
    "<img src=x onerror=alert(1)>",
    "</script><script>window.__pwned = 1</script>",
    '"><svg onload=alert(2)>',
    "\x1b[31mERROR\x1b[0m red \x1b[1;32mbold green\x1b[0m \x1b]0;evil title\x07 tail",
]


@pytest.fixture(scope="session", autouse=True)
def _quick_heartbeat() -> Iterator[None]:
    """SSE comments every 0.3 s instead of 15: a test's reader thread notices its stop
    flag on the next line, and the server notices a closed stream on its next write."""
    from logtorukun.web import sse

    before, sse.HEARTBEAT = sse.HEARTBEAT, 0.3
    yield
    sse.HEARTBEAT = before


@pytest.fixture(autouse=True)
def _earlier_follows_ended(request: pytest.FixtureRequest) -> None:
    """A test on the session's server starts after every earlier follow has ended and
    written its `follow_end`: those records and upstreams are not this test's."""
    if "live" in request.fixturenames:
        live: LiveServer = request.getfixturevalue("live")
        live.quiet()


@pytest.fixture(scope="session")
def web_worker() -> Iterator[Worker]:
    """A worker only the web tests use: they append to follow.log and add files."""
    w = Worker(name="web")
    try:
        w.start()
        xss = w.root / "xss.log"
        xss.write_text("\n".join(XSS_LINES) + "\n")
        xss.chmod(0o644)
        follow = w.root / "follow.log"
        follow.write_text("2024-12-17 14:00:00 INFO first line\n")
        follow.chmod(0o644)
        yield w
    finally:
        w.destroy()


@pytest.fixture(scope="session")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="session")
def live(web_worker: Worker, web_dir: Path) -> Iterator[LiveServer]:
    """One server for the session."""
    with running(write_config(web_dir, web_worker)) as server:
        yield server


# ---------------------------------------------------------------------- Chromium

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per module; each test gets a context of its own (`new_page`). Not
    per session: Playwright's sync API can leave its event loop marked running between
    calls, and the async tests of a later module then cannot start theirs."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as pg:
        yield pg


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    """The messages of every alert/confirm the page opens (each dismissed)."""
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen
