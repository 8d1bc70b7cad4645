"""Levels and structured lines in Chromium: detection in the usual formats, level
toggles (kept per browser), JSON/logfmt fields with click-to-search."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.support import LiveServer, sign_in

pytestmark = pytest.mark.browser

LINES = [
    ("2024-12-17 14:00:00 ERROR plain word", "error"),
    ("    at com.example.Main(Main.java:1)", "error"),  # a stack line goes with its error
    ('{"ts":"2024-12-17T14:00:01Z","level":"warn","msg":"json level","user":"ann"}', "warn"),
    ('{"time":1734444002,"severity":"DEBUG","msg":"json severity"}', "debug"),
    ('{"level":30,"msg":"pino number","req":{"id":"r-7","path":"/pay"}}', "info"),
    ('{"PRIORITY":"3","MESSAGE":"journal priority"}', "error"),
    ("<4>kernel: syslog priority prefix", "warn"),
    ("ts=2024-12-17T14:00:03Z level=debug msg=logfmt caller=main.go:12", "debug"),
    ('ts=2024-12-17T14:00:04Z level=info msg="logfmt quoted" user=bob', "info"),
    ("2024-12-17 14:00:05 INFO plain info", "info"),
]


@pytest.fixture
def mixed(web_worker: Worker) -> Iterator[Path]:
    path = web_worker.root / "levels.log"
    path.write_text("".join(text + "\n" for text, _ in LINES))
    path.chmod(0o644)
    yield path
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def visible_texts(page: Page) -> list[str]:
    return page.locator("#log .line:visible").all_inner_texts()


def test_levels_are_detected_and_filtered(page: Page, live: LiveServer, mixed: Path) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={mixed}")
    rows = page.locator("#log .line")
    expect(rows).to_have_count(len(LINES))
    got = [rows.nth(i).get_attribute("data-lv") for i in range(len(LINES))]
    assert got == [lv for _, lv in LINES]
    page.uncheck("#lv-debug")
    page.uncheck("#lv-info")
    want = [text for text, lv in LINES if lv in ("error", "warn")]
    expect(page.locator("#log .line:visible")).to_have_count(len(want))
    assert visible_texts(page) == want
    assert "levels=error%2Cwarn" in page.url or "levels=error,warn" in page.url
    # Kept for the next visit in this browser.
    page.goto(f"{live.url}/view?host=web1&path={mixed}")
    expect(page.locator("#log .line:visible")).to_have_count(len(want))
    assert not page.is_checked("#lv-info") and page.is_checked("#lv-error")


def test_json_and_logfmt_fields_expand_and_a_value_searches(
    page: Page, live: LiveServer, mixed: Path
) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={mixed}")
    pino = page.locator("#log .line", has_text="pino number")
    expect(pino).to_have_text(LINES[4][0])  # the ▸ button adds no text to the line
    pino.locator("button.expand").click()
    fields = page.locator("#log .fields")
    expect(fields).to_have_count(1)
    keys = fields.locator(".key").all_inner_texts()
    values = fields.locator(".value").all_inner_texts()
    assert dict(zip(keys, values, strict=True)) == {
        "level": "30",
        "msg": "pino number",
        "req.id": "r-7",
        "req.path": "/pay",
    }
    expect(pino.locator("button.expand")).to_have_attribute("aria-expanded", "true")
    page.locator("#log .line", has_text="logfmt quoted").locator("button.expand").click()
    logfmt = page.locator("#log .fields").nth(1)
    expect(logfmt.locator(".value", has_text="logfmt quoted")).to_be_visible()
    # Clicking a value searches for it on the worker.
    logfmt.locator(".value", has_text="bob").click()
    expect(page.locator("#pattern")).to_have_value("bob")
    expect(page.locator("#status")).to_contain_text("1 matching line")
    expect(page.locator("#log .line")).to_have_text(LINES[8][0])
