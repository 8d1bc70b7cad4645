"""The viewer's follow in Chromium: exact continuity from Load, reconnect after a dropped
worker connection, "stalled" when the worker goes quiet, gap lines."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.client.helpers import gate_pids
from tests.support.sshd import Worker
from tests.web.support import Held, LiveServer, own_log, record_badge, sign_in

pytestmark = pytest.mark.browser


@pytest.fixture
def log(web_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A log of this test's own, with three lines."""
    text = "".join(f"2024-12-17 14:00:0{i} INFO start {i}\n" for i in range(3))
    with own_log(web_worker, request, text) as path:
        yield path


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(ln + "\n" for ln in lines))


def shown(page: Page) -> list[str]:
    return page.locator("#log .line:not(.gap)").all_inner_texts()


def open_and_load(page: Page, live: LiveServer, path: Path) -> None:
    sign_in(page, live, "olivia", f"/view?host=web1&path={path}")
    expect(page.locator("#status")).to_contain_text("3 lines")


def test_load_then_follow_loses_and_repeats_nothing(
    page: Page, live: LiveServer, log: Path
) -> None:
    open_and_load(page, live, log)
    before = shown(page)
    between = [f"2024-12-17 14:01:{i:02d} INFO between {i}" for i in range(11)]
    append(log, between)  # written after the Load, before the Follow
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    expect(page.locator("#log .line").last).to_have_text(between[-1])
    later = [f"2024-12-17 14:02:{i:02d} INFO later {i}" for i in range(3)]
    append(log, later)
    expect(page.locator("#log .line").last).to_have_text(later[-1])
    assert shown(page) == before + between + later
    # Stop, write, follow again: continues where the last follow ended.
    page.click("#follow")
    expect(page.locator("#live-badge")).to_be_hidden()
    gap = [f"2024-12-17 14:03:{i:02d} INFO stopped {i}" for i in range(4)]
    append(log, gap)
    page.click("#follow")
    expect(page.locator("#log .line").last).to_have_text(gap[-1])
    assert shown(page) == before + between + later + gap


def test_follow_clicked_while_the_first_load_is_out(
    page: Page, live: LiveServer, log: Path
) -> None:
    """Follow clicked before the page's first Load answered waits for it, then goes on
    from where its lines end: nothing between them lost, nothing shown twice."""
    tail = Held(page, "**/api/hosts/web1/tail*")
    sign_in(page, live, "olivia", f"/view?host=web1&path={log}")
    tail.wait()
    start = log.read_text().splitlines()
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")  # the click was taken
    between = ["2024-12-17 14:01:00 INFO while loading"]
    append(log, between)  # before the Load reads the file: the Load shows it
    tail.release()
    expect(page.locator("#status")).to_contain_text("Following web1:")
    assert shown(page) == start + between
    then = ["2024-12-17 14:02:00 INFO after the load"]
    append(log, then)
    expect(page.locator("#log .line").last).to_have_text(then[0])
    assert shown(page) == start + between + then
    starts = live.audit.query(event="follow_start", source=str(log), limit=10)
    assert len(starts) == 1 and starts[0].params is not None
    assert starts[0].params["from"]  # it went on from the Load's end


def test_a_dropped_worker_connection_reconnects_and_resumes_exactly(
    page: Page, live: LiveServer, web_worker: Worker, log: Path
) -> None:
    open_and_load(page, live, log)
    before = shown(page)
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    first = ["2024-12-17 14:10:00 INFO before the drop"]
    append(log, first)
    expect(page.locator("#log .line").last).to_have_text(first[0])
    record_badge(page)
    for pid in gate_pids(web_worker):  # the bridge dies: every follow through it drops
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    during = [f"2024-12-17 14:10:{i:02d} INFO during the outage {i}" for i in range(1, 6)]
    append(log, during)
    expect(page.locator("#log .line").last).to_have_text(during[-1], timeout=20000)
    after = ["2024-12-17 14:11:00 INFO after the reconnect"]
    append(log, after)
    expect(page.locator("#log .line").last).to_have_text(after[0])
    assert shown(page) == before + first + during + after
    assert "RECONNECTING" in page.evaluate("window.__badges")
    expect(page.locator("#live-badge")).to_have_text("LIVE")


def test_a_hung_worker_shows_stalled_then_live_again(
    page: Page, live: LiveServer, web_worker: Worker, log: Path
) -> None:
    open_and_load(page, live, log)
    page.click("#follow")
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    append(log, ["2024-12-17 14:20:00 INFO alive"])
    expect(page.locator("#log .line").last).to_have_text("2024-12-17 14:20:00 INFO alive")
    gates = [
        pid
        for pid in gate_pids(web_worker)
        if b"python3" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert gates
    try:
        for pid in gates:
            os.kill(pid, signal.SIGSTOP)
        expect(page.locator("#live-badge")).to_have_text("STALLED")
        expect(page.locator("#status")).to_contain_text("Stalled")
        append(log, ["2024-12-17 14:20:30 INFO written while hung"])
    finally:
        for pid in gates:
            os.kill(pid, signal.SIGCONT)
    expect(page.locator("#live-badge")).to_have_text("LIVE")
    expect(page.locator("#log .line").last).to_have_text(
        "2024-12-17 14:20:30 INFO written while hung"
    )


def test_a_file_rotated_away_before_the_follow_shows_a_gap_line(
    page: Page, live: LiveServer, web_worker: Worker, log: Path
) -> None:
    open_and_load(page, live, log)
    new = log.with_suffix(".new")
    new.write_text("2024-12-17 15:00:00 INFO first line of the new file\n")
    new.chmod(0o644)
    new.rename(log)  # the loaded file is gone (compressed away, say)
    page.click("#follow")
    gap = page.locator("#log .line.gap")
    expect(gap).to_have_count(1)
    expect(gap).to_contain_text("rotated away")
    expect(page.locator("#log .line").last).to_have_text(
        "2024-12-17 15:00:00 INFO first line of the new file"
    )
