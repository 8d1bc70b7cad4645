"""A page's buttons work once its script has run, not before (Chromium).

Until then they are disabled in the HTML: a click would do nothing, or submit its form
natively and drop the page's parameters. And the live badge says nothing while hidden.
Both were seen together: on a busy machine a test clicked Follow while the viewer's
scripts were still loading, the click was lost, and the hidden badge's built-in "LIVE"
passed the next check; the page then never followed.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.support import Held, LiveServer, sign_in

pytestmark = pytest.mark.browser

PAGES = [
    # (user, page, its own script, the buttons it enables)
    ("olivia", "/", "hosts.js", ["#refresh"]),
    (
        "olivia",
        "/view?host=web1&path={log}",
        "view.js",
        ["#run", "#follow", "#download", "#copy-link"],
    ),
    (
        "olivia",
        "/merged?src=web1:{log}",
        "merged.js",
        ["#add-source", "#run", "#follow", "#copy-link"],
    ),
    ("olivia", "/search", "search.js", ["#go"]),
    ("alice", "/audit", "audit.js", ["#audit-filter"]),
]


@pytest.mark.parametrize(("user", "path", "script", "buttons"), PAGES, ids=[p[2] for p in PAGES])
def test_buttons_are_enabled_by_their_pages_script(
    page: Page,
    live: LiveServer,
    web_worker: Worker,
    user: str,
    path: str,
    script: str,
    buttons: list[str],
) -> None:
    held = Held(page, f"**/static/{script}")
    sign_in(page, live, user, path.format(log=web_worker.app_log))
    held.wait()
    for b in buttons:
        expect(page.locator(b)).to_be_visible()
        expect(page.locator(b)).to_be_disabled()
    held.release()
    for b in buttons:
        expect(page.locator(b)).to_be_enabled()


def test_follow_clicked_as_soon_as_it_can_be_follows(
    page: Page, live: LiveServer, web_worker: Worker
) -> None:
    held = Held(page, "**/static/view.js")
    sign_in(page, live, "olivia", f"/view?host=web1&path={web_worker.app_log}")
    held.wait()
    badge = page.locator("#live-badge")
    expect(badge).to_be_hidden()
    expect(badge).to_have_text("")  # not a "LIVE" a check could mistake for a follow
    held.release()
    page.click("#follow")  # waits until the script has enabled it
    expect(badge).to_be_visible()
    expect(badge).to_have_text("LIVE")
    expect(page.locator("#status")).to_contain_text("Following web1:")
    page.click("#follow")
    expect(badge).to_be_hidden()
    expect(badge).to_have_text("")
