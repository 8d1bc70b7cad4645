"""The pages in real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.conftest import XSS_LINES
from tests.web.support import LiveServer, sign_in

pytestmark = pytest.mark.browser


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_sign_in_browse_open_and_search(page: Page, live: LiveServer, web_worker: Worker) -> None:
    sign_in(page, live, "olivia")
    expect(page.locator(".host h2")).to_have_text(["web1", "web2", "down"])
    expect(page.locator('.host[data-host="down"] .error')).to_contain_text("502")
    page.locator('.host[data-host="web1"] a.source', has_text="app.log").first.click()
    expect(page.locator("#status")).to_contain_text("200 lines")
    last = web_worker.app_log.read_text().splitlines()[-1]
    expect(page.locator("#log .line").last).to_have_text(last)
    expect(page.locator("#log .line.lvl-error").first).to_be_visible()
    # Search: '/' focuses the box; Enter runs a grep on the worker.
    page.locator("body").press("/")
    expect(page.locator("#pattern")).to_be_focused()
    page.keyboard.type("order 80412")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("1 matching line ·")
    expect(page.locator("#log .line")).to_have_count(1)
    expect(page.locator("#log mark")).to_have_text("order 80412")
    # The address bar is a deep link to this result.
    assert "pattern=order+80412" in page.url


def test_follow_pause_and_resume(page: Page, live: LiveServer, web_worker: Worker) -> None:
    path = web_worker.root / "follow.log"
    sign_in(page, live, "olivia", f"/view?host=web1&path={path}")
    expect(page.locator("#status")).to_contain_text(" ms · audit #")
    page.locator("body").press("f")
    expect(page.locator("#live-badge")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Following")  # the `ready`: open
    marker = f"browser-live-{time.time()}"
    _append(path, f"2024-12-17 14:01:00 WARN {marker}\n")
    expect(page.locator("#log .line", has_text=marker)).to_have_count(1)
    page.locator("body").press(" ")  # pause
    expect(page.locator("#live-badge")).to_have_text("PAUSED")
    hidden = f"while-paused-{time.time()}"
    _append(path, f"2024-12-17 14:01:01 INFO {hidden}\n")
    expect(page.locator("#new-lines")).to_have_text("1 new line — resume")
    expect(page.locator("#log .line", has_text=hidden)).to_have_count(0)
    page.click("#new-lines")
    expect(page.locator("#log .line", has_text=hidden)).to_have_count(1)
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    page.locator("body").press("f")  # stop
    expect(page.locator("#live-badge")).to_be_hidden()


def test_follow_keeps_the_dom_capped(page: Page, live: LiveServer, web_worker: Worker) -> None:
    path = web_worker.root / "follow.log"
    sign_in(page, live, "olivia", f"/view?host=web1&path={path}&follow=1")
    expect(page.locator("#live-badge")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Following")  # the `ready`: open
    lines = "".join(f"2024-12-17 14:02:00 INFO burst {i}\n" for i in range(8000))
    _append(path, lines)
    expect(page.locator("#log .line").last).to_have_text("2024-12-17 14:02:00 INFO burst 7999")
    count = page.locator("#log .line").count()
    assert count <= 5000
    expect(page.locator("#log")).to_have_class("log trimmed")


def test_deep_link_opens_the_query(page: Page, live: LiveServer, web_worker: Worker) -> None:
    sign_in(
        page,
        live,
        "olivia",
        f"/view?host=web1&path={web_worker.app_log}&pattern=charge+failed&lines=3",
    )
    expect(page.locator("#pattern")).to_have_value("charge failed")
    expect(page.locator("#log .line")).to_have_count(3)
    expect(page.locator("#log mark").first).to_have_text("charge failed")


def test_a_user_without_the_grant_sees_neither_host_nor_data(
    page: Page, live: LiveServer, web_worker: Worker
) -> None:
    sign_in(page, live, "rita")
    expect(page.locator(".host h2")).to_have_text(["web1"])
    expect(page.locator(".host a.source")).to_have_count(1)  # app.log only
    expect(page.locator("nav a", has_text="Audit")).to_have_count(0)
    # web2 exists, but rita has no grant there: the page is the unknown-host page.
    resp = page.goto(f"{live.url}/view?host=web2&path={web_worker.app_log}")
    assert resp is not None and resp.status == 404
    html = page.content()
    ghost = page.goto(f"{live.url}/view?host=zz9&path={web_worker.app_log}")
    assert ghost is not None and ghost.status == 404
    assert page.content().replace("zz9", "web2") == html
    assert "2024-12-17" not in page.content()
    # The API says no as well, whatever the page would have done.
    status = page.evaluate(
        """async (p) => (await fetch('/api/hosts/web2/tail?path=' +
        encodeURIComponent(p))).status""",
        str(web_worker.app_log),
    )
    assert status == 404


def test_log_content_renders_inert(
    page: Page, dialogs: list[str], live: LiveServer, web_worker: Worker
) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={web_worker.root / 'xss.log'}")
    rows = page.locator("#log .line")
    expect(rows).to_have_count(len(XSS_LINES))
    expect(rows.nth(0)).to_have_text("<img src=x onerror=alert(1)>")
    expect(rows.nth(1)).to_have_text("</script><script>window.__pwned = 1</script>")
    assert page.locator("#log img, #log script, #log svg").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    # ANSI colours via classes; the OSC title sequence is gone, not shown or obeyed.
    expect(rows.nth(3).locator("span.fg-red")).to_have_text("ERROR")
    expect(rows.nth(3).locator("span.b.fg-green")).to_have_text("bold green")
    assert "evil title" not in rows.nth(3).inner_text()
    assert "\x1b" not in rows.nth(3).inner_text()


class _Evil(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/logout">'
            '<input name="csrf" value="forged"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_csrf_is_refused(page: Page, live: LiveServer) -> None:
    sign_in(page, live, "olivia")
    expect(page.locator(".host h2").first).to_be_visible()
    # Same page, no token: refused.
    status = page.evaluate("""async () => (await fetch('/logout', {method: 'POST',
        body: new URLSearchParams({csrf: 'nope'})})).status""")
    assert status == 403
    # Another origin (same site: 127.0.0.1, another port) posting a form: refused too.
    _Evil.target = live.url
    evil = http.server.HTTPServer(("127.0.0.1", 0), _Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_url(f"{live.url}/logout")
        assert "Not allowed" in page.content() or "forbidden" in page.content()
    finally:
        evil.shutdown()
    page.goto(live.url + "/")
    expect(page.locator(".who")).to_have_text("olivia")  # still signed in
    refused = live.audit.query(event="refused", user="olivia", limit=2)
    assert all(r.action == "logout" for r in refused)
    # The real sign-out button works.
    page.click("#logout")
    expect(page.locator("h1")).to_have_text("Sign in")


def test_dark_mode_and_keys(page: Page, live: LiveServer, web_worker: Worker) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={web_worker.app_log}&lines=500")
    expect(page.locator("#status")).to_contain_text("500 lines")
    log = page.locator("#log")
    page.locator("body").press("g")
    assert log.evaluate("e => e.scrollTop") == 0
    page.locator("body").press("G")
    assert log.evaluate("e => e.scrollTop + e.clientHeight >= e.scrollHeight - 2")
    before = page.evaluate("document.documentElement.getAttribute('data-theme')")
    page.locator("body").press("d")
    after = page.evaluate("document.documentElement.getAttribute('data-theme')")
    assert after in ("dark", "light") and after != before
    page.reload()
    assert page.evaluate("document.documentElement.getAttribute('data-theme')") == after
