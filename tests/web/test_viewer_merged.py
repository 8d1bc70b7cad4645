"""The merged view in Chromium: three sources interleaved by time with their labels,
continuation lines kept with their predecessor, level filter and JSON fields, the merged
follow (each appended line exactly once, with the right label), a refused source and
too many sources."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect

from logtorukun.web.merge import MAX_SOURCES
from tests.client.helpers import gate_pids
from tests.support.sshd import Worker
from tests.web.support import LiveServer, record_badge, sign_in

pytestmark = pytest.mark.browser

A = [
    "2024-12-17 14:00:01 INFO a1 started",
    "2024-12-17 14:00:04 ERROR a2 boom",
    "    at one(A.java:1)",
    "    at two(A.java:2)",
    "2024-12-17 14:00:07 DEBUG a3 done",
]
B = [
    "2024-12-17 14:00:02 WARN b1 slow",
    '2024-12-17 14:00:05 {"level": "info", "msg": "b2 json", "user": "kim"}',
]
C = ["2024-12-17T14:00:03Z INFO c1", "2024-12-17T23:00:06+09:00 INFO c2 from tokyo"]
ROWS = [
    (0, A[0]),
    (1, B[0]),
    (2, C[0]),
    (0, A[1]),
    (0, A[2]),
    (0, A[3]),
    (1, B[1]),
    (2, C[1]),
    (0, A[4]),
]


@pytest.fixture
def three(web_worker: Worker, request: pytest.FixtureRequest) -> Iterator[list[Path]]:
    stem = request.node.name[:30]
    paths = []
    for name, lines in (("a", A), ("b", B), ("c", C)):
        p = web_worker.root / f"{stem}-{name}.log"
        p.write_text("\n".join(lines) + "\n")
        p.chmod(0o644)
        paths.append(p)
    yield paths
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def labels(paths: list[Path]) -> list[str]:
    return [f"web1:{paths[0]}", f"web2:{paths[1]}", f"web1:{paths[2]}"]


def url(srcs: list[str], **extra: str) -> str:
    return "/merged?" + urlencode([*(("src", s) for s in srcs), *extra.items()])


def rows(page: Page) -> list[tuple[str, str, str]]:
    """(source label's title, its colour class, the line's own text) of every row."""
    got = page.evaluate(
        """() => [...document.querySelectorAll('#log .line')].map((r) => {
            const chip = r.querySelector('.src');
            const text = [...r.childNodes].filter((n) => n !== chip && !(n.classList
                && n.classList.contains('expand')) && !(n.classList
                && n.classList.contains('fields'))).map((n) => n.textContent).join('');
            return [chip.title, [...chip.classList].find((c) => /^s[0-9]$/.test(c)), text];
        })"""
    )
    return [tuple(x) for x in got]


def test_three_sources_in_time_order_with_labels(
    page: Page, live: LiveServer, three: list[Path]
) -> None:
    srcs = labels(three)
    sign_in(page, live, "olivia", url(srcs))
    expect(page.locator("#status")).to_contain_text("9 lines from 3 sources")
    assert rows(page) == [(srcs[i], f"s{i}", line) for i, line in ROWS]
    # The chosen sources are listed with the same colours and a short label.
    chips = page.locator("#chosen .src")
    expect(chips).to_have_count(3)
    assert chips.nth(0).text_content() == f"web1 {three[0].name}"
    assert chips.nth(1).get_attribute("class") == "src s1"
    # The level filter: the stack trace goes with its error line.
    page.uncheck("#lv-error")
    hidden = page.locator("#log .line:not(:visible)")
    expect(hidden).to_have_count(3)
    texts = hidden.all_text_contents()
    assert [t.endswith(x) for t, x in zip(texts, A[1:4], strict=True)] == [True] * 3
    page.check("#lv-error")
    page.uncheck("#lv-info")
    # b2 is a JSON line with level info: hidden; its ▸ fields work once shown again.
    expect(page.locator("#log .line:visible")).to_have_count(5)
    page.check("#lv-info")
    json_row = page.locator("#log .line", has_text="b2 json")
    json_row.locator(".expand").click()
    expect(page.locator("#log .fields")).to_contain_text("kim")


def test_merged_follow_each_line_once_with_its_label(
    page: Page, live: LiveServer, three: list[Path]
) -> None:
    srcs = labels(three)
    sign_in(page, live, "olivia", url(srcs))
    expect(page.locator("#status")).to_contain_text("9 lines from 3 sources")
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    expect(page.locator("#status")).to_contain_text("Following 3 sources")
    want = []
    for n in range(4):
        for i, p in enumerate(three):
            line = f"2024-12-17 14:01:0{n} INFO appended {i}.{n}"
            with open(p, "a") as f:
                f.write(line + "\n")
            want.append((srcs[i], f"s{i}", line))
    expect(page.locator("#log .line")).to_have_count(len(ROWS) + len(want))
    got = rows(page)[len(ROWS) :]
    assert sorted(got) == sorted(want)
    for i in range(3):  # each source in its own order
        assert [r for r in got if r[1] == f"s{i}"] == [w for w in want if w[1] == f"s{i}"]
    assert "follow=1" in page.url
    page.click("#follow")
    expect(page.locator("#live-badge")).to_be_hidden()


def test_a_refused_source_is_named(page: Page, live: LiveServer, web_worker: Worker) -> None:
    other = f"web1:{web_worker.root}/other.log"
    sign_in(page, live, "rita", url([f"web1:{web_worker.app_log}", other]))
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Not allowed")
    expect(notice).to_contain_text(other)
    expect(page.locator("#log .line")).to_have_count(0)


def test_too_many_sources(page: Page, live: LiveServer, web_worker: Worker) -> None:
    srcs = [f"web1:{web_worker.root}/f{i}.log" for i in range(MAX_SOURCES + 1)]
    sign_in(page, live, "olivia", url(srcs))
    expect(page.locator("#notice")).to_contain_text(f"at most {MAX_SOURCES} sources")


def test_choose_sources_from_what_you_may_read(
    page: Page, live: LiveServer, web_worker: Worker
) -> None:
    sign_in(page, live, "rita", "/merged")
    # rita may read web1 only, and there app.log only.
    expect(page.locator("#pick-host option")).to_have_count(2)
    page.select_option("#pick-host", "web1")
    expect(page.locator("#pick-source")).to_be_enabled()
    assert page.locator("#pick-source option").all_text_contents() == [str(web_worker.app_log)]
    page.click("#add-source")
    expect(page.locator("#chosen .src")).to_have_count(1)
    expect(page.locator("#status")).to_contain_text("from 1 source")
    expect(page.locator("#download")).to_be_disabled()  # rita has no download grant
    assert "You may not download web1:" in (page.locator("#download").get_attribute("title") or "")
    assert f"src=web1%3A{str(web_worker.app_log).replace('/', '%2F')}" in page.url


def test_merge_with_from_the_single_viewer(page: Page, live: LiveServer, three: list[Path]) -> None:
    sign_in(page, live, "olivia", f"/view?host=web2&path={three[1]}")
    expect(page.locator("#status")).to_contain_text("2 lines")
    page.click("#merge-with")
    expect(page.locator("#status")).to_contain_text("2 lines from 1 source")
    assert page.locator("#chosen .src").get_attribute("title") == f"web2:{three[1]}"
    page.select_option("#pick-host", "web1")
    page.select_option("#pick-source", str(three[0]))
    page.click("#add-source")
    expect(page.locator("#status")).to_contain_text("7 lines from 2 sources")
    assert [r[2] for r in rows(page)] == [A[0], B[0], A[1], A[2], A[3], B[1], A[4]]


def test_merged_follow_continues_from_load_and_across_a_dropped_connection(
    page: Page, live: LiveServer, web_worker: Worker, three: list[Path]
) -> None:
    srcs = labels(three)[:2]
    sign_in(page, live, "olivia", url(srcs))
    expect(page.locator("#status")).to_contain_text("7 lines from 2 sources")
    before = rows(page)

    def write(n: int, what: str) -> list[tuple[str, str, str]]:
        out = []
        for i, p in enumerate(three[:2]):
            line = f"2024-12-17 14:0{n}:00 INFO {what} {i}"
            with open(p, "a") as f:
                f.write(line + "\n")
            out.append((srcs[i], f"s{i}", line))
        return out

    between = write(1, "between load and follow")  # a merged follow starts where Load ended
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    expect(page.locator("#log .line")).to_have_count(len(before) + 2)
    record_badge(page)
    for pid in gate_pids(web_worker):  # the bridge dies: both sources' follows drop
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    during = write(2, "during the outage")
    expect(page.locator("#log .line")).to_have_count(len(before) + 4, timeout=20000)
    after = write(3, "after the reconnect")
    expect(page.locator("#log .line")).to_have_count(len(before) + 6)
    got = rows(page)
    assert got[: len(before)] == before
    assert sorted(got[len(before) :]) == sorted(between + during + after)
    assert "RECONNECTING" in page.evaluate("window.__badges")
    expect(page.locator("#live-badge")).to_have_text("LIVE")


def test_download_the_merged_lines(page: Page, live: LiveServer, three: list[Path]) -> None:
    srcs = labels(three)
    sign_in(page, live, "olivia", url(srcs))
    expect(page.locator("#status")).to_contain_text("9 lines from 3 sources")
    with page.expect_download() as got:
        page.click("#download")
    assert got.value.suggested_filename == "merged_tail.log"
    text = Path(got.value.path()).read_text()
    assert text == "".join(f"{srcs[i]}\t{line}\n" for i, line in ROWS)
    # A search: the matching lines as shown, in the same form.
    page.fill("#pattern", "INFO")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("3 matching lines from 3 sources")
    with page.expect_download() as got:
        page.click("#download")
    want = [(i, line) for i, line in ROWS if "INFO" in line]
    assert Path(got.value.path()).read_text() == "".join(f"{srcs[i]}\t{x}\n" for i, x in want)
