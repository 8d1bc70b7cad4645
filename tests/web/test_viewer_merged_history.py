"""Scrolling back through a merged view in Chromium: two logs on two hosts, each rotated
(one with a `.gz`), page after page until both say "the beginning": every line once, in
time order, each with its own label, a marker right after each source's last line from
an older file, every page audited per source."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.support import LiveServer, scroll_back, sign_in
from tests.web.test_viewer_merged import url

pytestmark = pytest.mark.browser

PER_FILE = 100
FILES = {"mh-a.log": [".2.gz", ".1", ""], "mh-b.log": [".1", ""]}  # oldest first


def stamp(seconds: int) -> str:
    return f"2024-12-17 14:{seconds // 60:02d}:{seconds % 60:02d}"


@pytest.fixture
def two_logs(web_worker: Worker) -> Iterator[tuple[list[str], list[tuple[int, str]]]]:
    """a.log (web1): .2.gz, .1, itself, at even seconds; b.log (web2): .1, itself, at odd
    seconds. Yields the two labels and every (source, line) in time order."""
    made: list[Path] = []
    timeline: list[tuple[int, int, str]] = []
    for src, (name, files) in enumerate(FILES.items()):
        parity = src
        for n, suffix in enumerate(files):
            path = web_worker.root / (name + suffix)
            lines = []
            for j in range(PER_FILE):
                k = n * PER_FILE + j
                t = 2 * k + parity
                lines.append(f"{stamp(t)} INFO {name} {k:03d}")
                timeline.append((t, src, lines[-1]))
            text = "".join(line + "\n" for line in lines).encode()
            path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
            path.chmod(0o644)
            age = 1734444000 - (len(files) - n) * 3600
            os.utime(path, (age, age))
            made.append(path)
    srcs = [f"web1:{web_worker.root}/mh-a.log", f"web2:{web_worker.root}/mh-b.log"]
    yield srcs, [(src, line) for _, src, line in sorted(timeline)]
    for path in made:
        path.unlink()


def all_rows(page: Page) -> list[tuple[int, bool, str]]:
    """(source index, is a marker, text without the label) of every row, top to bottom."""
    got = page.evaluate(
        """() => [...document.querySelectorAll('#log .line')].map((r) => {
            const chip = r.querySelector('.src');
            const text = [...r.childNodes].filter((n) => n !== chip && !(n.classList
                && n.classList.contains('expand'))).map((n) => n.textContent).join('');
            return [Number(r.dataset.src), r.classList.contains('gap'), text];
        })"""
    )
    return [(int(s), bool(g), str(t)) for s, g, t in got]


def test_scroll_back_through_a_merged_view_across_rotations(
    page: Page, live: LiveServer, two_logs: tuple[list[str], list[tuple[int, str]]]
) -> None:
    srcs, timeline = two_logs
    sign_in(page, live, "olivia", url(srcs, lines="50"))
    expect(page.locator("#status")).to_contain_text("50 lines from 2 sources")
    assert [(s, t) for s, g, t in all_rows(page)] == timeline[-50:]
    head = live.audit.head()
    beginnings = page.locator("#log .line.gap", has_text="the beginning")
    scroll_back(page, lambda: beginnings.count() == 2, "the beginning of both")
    expect(beginnings).to_have_count(2)
    got = all_rows(page)
    assert [(s, t) for s, g, t in got if not g] == timeline
    markers = [(i, s, t) for i, (s, g, t) in enumerate(got) if g]
    want = {
        (0, "⚠ the beginning: no older file of this log"),
        (1, "⚠ the beginning: no older file of this log"),
        (0, "⚠ above: " + srcs[0][5:] + ".2.gz (older) · below: " + srcs[0][5:] + ".1"),
        (0, "⚠ above: " + srcs[0][5:] + ".1 (older) · below: " + srcs[0][5:]),
        (1, "⚠ above: " + srcs[1][5:] + ".1 (older) · below: " + srcs[1][5:]),
    }
    assert sorted((s, t) for _, s, t in markers) == sorted(want)
    for i, s, t in markers:
        source_rows = [(j, text) for j, (s2, g, text) in enumerate(got) if s2 == s and not g]
        if "the beginning" in t:  # above the source's first line
            assert i < source_rows[0][0]
        else:  # right after the last line of the older file, before the newer one's first
            older = t.split("above: ")[1].split(" (older)")[0].rsplit("/", 1)[1]
            above = [text for j, text in source_rows if j < i]
            below = [text for j, text in source_rows if j > i]
            last_old, first_new = above[-1], below[0]
            name, n = last_old.split(" ")[3], int(last_old.rsplit(" ", 1)[1])
            assert older == name + FILES[name][n // PER_FILE]
            assert int(first_new.rsplit(" ", 1)[1]) == n + 1 and (n + 1) % PER_FILE == 0
    recs = live.since(head)
    parents = [r for r in recs if r.action == "merged_history" and r.event == "read"]
    reads = [r for r in recs if r.action == "history" and r.event == "read"]
    assert len(parents) >= 10 and all(r.decision == "allow" for r in parents + reads)
    assert sorted(r.params["merged"] for r in reads) == sorted(
        p.seq for p in parents for _ in p.params["sources"]
    )
    assert {r.host for r in reads} == {"web1", "web2"}
    assert all(live.end_of(r.seq).event == "read_end" for r in parents + reads)
