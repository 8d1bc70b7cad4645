"""Every page at phone width and through axe-core, in light and dark mode (Chromium);
the viewers' toolbars at every width.

390 px is a current phone in portrait: no page may be wider than the screen (the page
itself must not scroll sideways; a log line may scroll inside its own box). axe-core
(pinned through axe-playwright-python, its bundled engine: nothing is fetched) must
report no serious or critical violation. The single and merged viewers' forms keep
everything inside their panel from a phone to a wide desktop (at 960 px the search
group once stuck out of it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from playwright.sync_api import Browser, Page, ViewportSize, expect

from tests.support.sshd import Worker
from tests.web.support import LiveServer, new_page, sign_in

pytestmark = pytest.mark.browser

PHONE: ViewportSize = {"width": 390, "height": 844}


def pages(w: Worker) -> list[tuple[str, str, str]]:
    """(user, path, something on the page once it is ready)."""
    return [
        ("", "/login", "h1"),
        ("olivia", "/", ".host h2"),
        ("olivia", f"/view?host=web1&path={w.app_log}", "#log .line"),
        ("olivia", f"/view?host=web1&path={w.app_log}&follow=1", "#live-badge"),
        ("olivia", "/search", "#sources-body .chip"),  # the suggestions, open
        # results by host, with the host that failed (down) listed above them
        (
            "olivia",
            f"/search?hosts=*&path={w.app_log}&pattern=order+8",
            "#progress .label:has-text('Done:')",
        ),
        # the same merged by time: each line marked with its host and file
        ("olivia", f"/search?hosts=*&path={w.app_log}&pattern=order+8&order=time", ".merged .line"),
        ("olivia", f"/merged?src=web1:{w.app_log}&src=web2:{w.app_log}", "#log .line .src"),
        ("alice", "/audit", "table tbody tr"),
        ("olivia", "/view?host=nope&path=/var/log/x.log", "h1"),
    ]


@pytest.fixture(params=["light", "dark"])
def phone(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    with new_page(browser, viewport=PHONE, color_scheme=request.param) as pg:
        yield pg


def open_page(page: Page, live: LiveServer, user: str, path: str, ready: str) -> None:
    if user:
        sign_in(page, live, user, path)
    else:
        page.goto(live.url + path)
    expect(page.locator(ready).first).to_be_visible()


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the viewport."""
    return int(
        page.evaluate(
            "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - window.innerWidth"
        )
    )


def test_no_page_is_wider_than_a_phone(phone: Page, live: LiveServer, web_worker: Worker) -> None:
    wide = {}
    for user, path, ready in pages(web_worker):
        phone.context.clear_cookies()
        open_page(phone, live, user, path, ready)
        if (px := overflow(phone)) > 0:
            wide[path] = px
    assert wide == {}, wide


def test_axe_finds_nothing_serious_on_any_page(
    phone: Page, live: LiveServer, web_worker: Worker
) -> None:
    axe = Axe()
    found = {}
    for user, path, ready in pages(web_worker):
        phone.context.clear_cookies()
        open_page(phone, live, user, path, ready)
        results = axe.run(phone)
        bad = [
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:6]} "
            f"{v['nodes'][0].get('failureSummary', '')[:160]}"
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if bad:
            found[path] = bad
    assert found == {}, "\n".join(f"{k}: {x}" for k, v in found.items() for x in v)


# Every control of a viewer's forms that sticks out of its panel: [form, control, px].
OUTSIDE = """() => {
  const out = [];
  for (const f of document.querySelectorAll("form.controls")) {
    const box = f.getBoundingClientRect();
    const right = box.right - f.clientLeft;  // inside the border
    for (const el of f.querySelectorAll("*")) {
      const r = el.getBoundingClientRect();
      if (r.width && r.right > right + 0.5) out.push([f.id, el.id || el.tagName, r.right - right]);
    }
    if (f.scrollWidth > f.clientWidth) out.push([f.id, "(scrolls)", f.scrollWidth - f.clientWidth]);
  }
  return out;
}"""


def test_the_viewer_forms_fit_their_panel_at_every_width(
    browser: Browser, live: LiveServer, web_worker: Worker
) -> None:
    log = web_worker.app_log
    viewers = [
        (f"/view?host=web1&path={log}", "#log .line"),
        (f"/merged?src=web1:{log}&src=web2:{log}", "#log .line .src"),
    ]
    widths = sorted({960, *range(390, 1441, 30)})
    out: dict[str, list[tuple[int, object]]] = {}
    with new_page(browser, viewport={"width": 960, "height": 800}) as page:
        for path, ready in viewers:
            page.context.clear_cookies()
            open_page(page, live, "olivia", path, ready)
            for width in widths:
                page.set_viewport_size({"width": width, "height": 800})
                if bad := page.evaluate(OUTSIDE):
                    out.setdefault(path.split("?")[0], []).append((width, bad[:3]))
    assert out == {}, out
