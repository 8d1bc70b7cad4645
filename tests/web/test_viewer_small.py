"""The viewer's small things in Chromium: settings kept per browser, local/UTC times,
"jump to latest", a follow link without the grant, "1 line", time errors by field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.sshd import Worker
from tests.web.support import LiveServer, new_page, own_log, sign_in

pytestmark = pytest.mark.browser


@pytest.fixture
def one(web_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Path]:
    with own_log(web_worker, request, "2024-12-17 14:00:00 INFO the only line\n") as path:
        yield path


@pytest.fixture
def tokyo(browser: Browser) -> Iterator[Page]:
    with new_page(browser, timezone_id="Asia/Tokyo") as pg:
        yield pg


def test_one_line_local_time_and_settings_kept(tokyo: Page, live: LiveServer, one: Path) -> None:
    page = tokyo
    sign_in(page, live, "olivia", f"/view?host=web1&path={one}")
    expect(page.locator("#status")).to_contain_text("1 line ·")
    ts = page.locator("#log .line .ts")
    expect(ts).to_have_text("2024-12-17 14:00:00")  # as written (no zone: UTC)
    page.check("#localtime")
    expect(ts).to_have_text("2024-12-17 23:00:00+09:00")
    page.fill("#lines", "50")
    page.dispatch_event("#lines", "change")
    page.uncheck("#wrap")
    # A new visit without parameters: the same settings.
    page.goto(f"{live.url}/view?host=web1&path={one}")
    expect(page.locator("#status")).to_contain_text("1 line ·")
    assert page.input_value("#lines") == "50"
    assert not page.is_checked("#wrap") and page.is_checked("#localtime")
    expect(ts).to_have_text("2024-12-17 23:00:00+09:00")
    expect(page.locator("#log")).to_have_class("log nowrap")
    page.uncheck("#localtime")
    expect(ts).to_have_text("2024-12-17 14:00:00")


def test_jump_to_latest_while_scrolled_up(page: Page, live: LiveServer, one: Path) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={one}")
    expect(page.locator("#status")).to_contain_text("1 line ·")
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    with open(one, "a") as f:
        f.write("".join(f"2024-12-17 14:00:01 INFO row {i}\n" for i in range(300)))
    expect(page.locator("#log .line").last).to_have_text("2024-12-17 14:00:01 INFO row 299")
    jump = page.locator("#jump-latest")
    expect(jump).to_be_hidden()  # at the bottom already
    page.locator("#log").evaluate("e => { e.scrollTop = 0; }")
    expect(jump).to_be_visible()
    jump.click()
    expect(jump).to_be_hidden()
    assert page.locator("#log").evaluate("e => e.scrollTop + e.clientHeight >= e.scrollHeight - 2")


def test_a_follow_link_without_the_grant_says_so(
    page: Page, live: LiveServer, web_worker: Worker
) -> None:
    sign_in(page, live, "rita", f"/view?host=web1&path={web_worker.app_log}&follow=1")
    expect(page.locator("#notice")).to_contain_text("you may not follow this source")
    expect(page.locator("#live-badge")).to_be_hidden()
    expect(page.locator("#log .line").first).to_be_visible()


def test_a_bad_time_names_the_field(page: Page, live: LiveServer, one: Path) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={one}")
    expect(page.locator("#since")).to_have_attribute("placeholder", "e.g. 15m, today")
    page.fill("#since", "tomorrow")
    page.click("#run")
    expect(page.locator("#notice")).to_contain_text("since: 'tomorrow' is not a time")
    page.fill("#since", "2h")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("0 lines")  # 2024 is long before 2h ago
