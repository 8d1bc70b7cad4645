"""Scrolling back through history in Chromium: page after page across the rotated and
compressed files of one log, in order, each page audited, the DOM kept bounded."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.support import LiveServer, scroll_back, sign_in

pytestmark = pytest.mark.browser


def numbered(tag: str, n: int) -> list[str]:
    return [f"2024-12-17 14:00:00 INFO {tag} {i:05d}" for i in range(n)]


@pytest.fixture
def rotated(web_worker: Worker, request: pytest.FixtureRequest) -> Iterator[tuple[Path, int]]:
    """hist-N.log.2.gz (oldest), hist-N.log.1, hist-N.log (newest): `n` lines each."""
    n = int(request.param)
    base = web_worker.root / f"hist{n}.log"
    files = [
        (base.with_name(base.name + ".2.gz"), "gz", 3),
        (base.with_name(base.name + ".1"), "one", 2),
        (base, "now", 1),
    ]
    for path, tag, age in files:
        text = "".join(line + "\n" for line in numbered(tag, n)).encode()
        path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
        path.chmod(0o644)
        os.utime(path, (1734444000 - age * 3600, 1734444000 - age * 3600))
    yield base, n
    for path, _, _ in files:
        path.unlink()


def rows(page: Page) -> list[str]:
    return page.locator("#log .line:not(.gap)").all_inner_texts()


def scroll_back_until(page: Page, first: str) -> None:
    scroll_back(page, lambda: page.locator("#log .line").first.inner_text() == first, first)


@pytest.mark.parametrize("rotated", [300], indirect=True)
def test_scroll_back_across_rotation_and_gz(
    page: Page, live: LiveServer, rotated: tuple[Path, int]
) -> None:
    base, n = rotated
    sign_in(page, live, "olivia", f"/view?host=web1&path={base}&lines=100")
    expect(page.locator("#status")).to_contain_text("100 lines")
    seq_before = live.audit.query(event="read", user="olivia", limit=1)[0].seq
    scroll_back_until(page, "⚠ the beginning: no older file of this log")
    want = numbered("gz", n) + numbered("one", n) + numbered("now", n)
    assert rows(page) == want
    markers = page.locator("#log .line.gap").all_inner_texts()
    assert markers[0] == "⚠ the beginning: no older file of this log"
    assert any(f"{base.name}.1 (older)" in m for m in markers)
    pages = [
        r
        for r in live.audit.query(event="read", user="olivia", limit=50)
        if r.seq > seq_before and r.action == "history"
    ]
    # 2 more pages of the newest file, 3 of each older one, and the look for older files
    assert len(pages) >= 8 and all(r.decision == "allow" for r in pages)


@pytest.mark.parametrize("rotated", [3000], indirect=True)
def test_paging_back_keeps_the_dom_bounded(
    page: Page, live: LiveServer, rotated: tuple[Path, int]
) -> None:
    base, n = rotated
    sign_in(page, live, "olivia", f"/view?host=web1&path={base}&lines=2000")
    expect(page.locator("#status")).to_contain_text("2000 lines")
    scroll_back_until(page, numbered("one", n)[0])
    count = page.locator("#log > *").count()
    assert count <= 5000
    jump = page.locator("#jump-latest")
    expect(jump).to_have_text("↓ Back to the latest lines")
    jump.click()
    expect(page.locator("#log .line").last).to_have_text(numbered("now", n)[-1])
    expect(jump).to_be_hidden()
