"""The search page in Chromium: suggestions of exactly the sources a user may read, hosts
that failed listed first with their reason, results in one scroll."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from logtorukun.audit.records import AuditRecord, AuditRef
from logtorukun.web.suggest import Listings
from tests.support.sshd import Worker
from tests.web.support import LiveServer, running, sign_in, with_hung_host, write_config

pytestmark = pytest.mark.browser


def suggested(page: Page) -> dict[str, set[str]]:
    """What the suggestions panel lists: file paths, and the globs offered."""
    expect(page.locator("#sources-count")).not_to_have_text("(loading…)")
    files = page.locator('#sources-body .sug-group[data-kind="files"] li')
    globs = page.locator('#sources-body .sug-group[data-kind="globs"] button.chip')
    return {
        "files": {t.split(" ", 1)[0] for t in files.all_inner_texts()},
        "globs": set(globs.all_inner_texts()),
    }


def listings(live: LiveServer, before: AuditRef | None) -> list[AuditRecord]:
    return [r for r in live.since(before) if r.action == "search_sources" and r.event == "read"]


def test_suggestions_are_exactly_what_the_user_may_read(
    page: Page, live: LiveServer, web_worker: Worker
) -> None:
    root = web_worker.root
    live.server.listings = Listings(ttl=3600)  # the second visit below reuses the listing
    before = live.audit.head()
    # olivia: ops (web1, web2, down; {root}/*). Her listing, filtered by the same grants
    # through the sources API, is what the panel must show: no more, no less.
    listing = live.client("olivia").get("/api/hosts/web1/sources").json()
    readable = {f["path"] for f in listing["files"]}
    assert f"{root}/app.log.1" in readable
    sign_in(page, live, "olivia", "/search")
    expect(page.locator("#sources")).to_have_attribute("open", "")
    seen = suggested(page)
    assert seen["files"] == readable
    assert f"{root}/*" in seen["globs"]  # her role's own glob
    # The default is a glob that matches her files (not /var/log/**/*.log, which does not).
    expect(page.locator("#path")).to_have_value(f"{root}/*")
    # down cannot be listed: said, with the reason, instead of a silent gap.
    expect(page.locator("#sources-body .notice.error")).to_contain_text("down (502")
    # The listing went through the audit trail, the worker told who asked and why.
    recs = listings(live, before)
    assert len(recs) == 1 and recs[0].user == "olivia" and recs[0].decision == "allow"
    assert recs[0].params["listed"] == ["web1", "web2", "down"]
    assert live.end_of(recs[0].seq).event == "read_end"
    # dan: dbsearch (label:db, {root}/*.log, search only) sees fewer: db1's .log files.
    page.context.clear_cookies()
    sign_in(page, live, "dan", "/search")
    narrow = suggested(page)
    assert narrow["files"] == {p for p in readable if p.endswith(".log")}
    assert f"{root}/app.log.1" not in narrow["files"] and f"{root}/*" not in narrow["globs"]
    expect(page.locator("#path")).to_have_value(f"{root}/*.log")
    expect(page.locator("#sources-count")).to_contain_text("on 1 host)")
    # olivia again: her listings come from the cache (still audited).
    mark = live.audit.head()
    page.context.clear_cookies()
    sign_in(page, live, "olivia", "/search")
    assert suggested(page)["files"] == readable
    again = listings(live, mark)
    assert len(again) == 1  # audited, even when nothing new is asked of the workers
    end = live.end_of(again[0].seq)
    assert end.outcome is not None and {"web1", "web2"} <= set(end.outcome["cached"])
    # Clicking a suggestion fills the Files field.
    page.locator("#sources-body button.chip", has_text=f"{root}/app.log.1").first.click()
    expect(page.locator("#path")).to_have_value(f"{root}/app.log.1")


def test_a_host_that_fails_last_is_listed_first_with_its_reason(
    page: Page, tmp_path: Path, web_worker: Worker, silent: socket.socket
) -> None:
    path = with_hung_host(write_config(tmp_path, web_worker), web_worker, silent)
    with running(path) as live:
        q = f"hosts=web1,web2,web-hung&path={web_worker.app_log}&pattern=order+80412"
        sign_in(page, live, "olivia", f"/search?{q}")
        # web1 and web2 answered; web-hung is still in its SSH handshake.
        expect(page.locator("#results .group-host .file")).to_have_count(2)
        expect(page.locator("#failed")).to_be_hidden()
        silent.close()  # now it fails: after every result is on the page
        item = page.locator("#failed li")
        expect(item).to_have_count(1)
        expect(item).to_contain_text("web-hung")
        expect(item).to_contain_text("502")
        expect(page.locator("#failed h2")).to_have_text("1 host failed")
        expect(page.locator("#progress .label")).to_contain_text("Done:")
        # Above the results, and not also a group of its own among them.
        expect(page.locator('#results .group-host[data-host="web-hung"]')).to_have_count(0)
        fail_box = page.locator("#failed").bounding_box()
        first = page.locator("#results .group-host").first.bounding_box()
        assert fail_box is not None and first is not None
        assert fail_box["y"] + fail_box["height"] <= first["y"]


SCROLLERS = """() => {
    const inner = [document.getElementById("results"),
                   ...document.querySelectorAll("#results *")];
    const boxes = inner.filter((e) => ["auto", "scroll"].includes(getComputedStyle(e).overflowY)
                                   || ["auto", "scroll"].includes(getComputedStyle(e).overflowX));
    const main = document.querySelector("main");
    return {
        inner: boxes.map((e) => e.className),
        mainScrolls: getComputedStyle(main).overflowY === "auto"
                     && main.scrollHeight > main.clientHeight,
        pageScrolls: document.scrollingElement.scrollHeight > window.innerHeight,
        lines: document.querySelectorAll("#results .line").length,
    };
}"""


@pytest.mark.parametrize("order", ["host", "time"])
def test_results_are_in_one_scroll(
    page: Page, live: LiveServer, web_worker: Worker, order: str
) -> None:
    q = f"hosts=web1,web2&path={web_worker.app_log}&pattern=INFO&max=300&order={order}"
    sign_in(page, live, "olivia", f"/search?{q}")
    expect(page.locator("#progress .label")).to_contain_text("Done:")
    expect(page.locator("#results .line")).to_have_count(600)
    found = page.evaluate(SCROLLERS)
    assert found["inner"] == [], found  # no scroll box inside the results
    assert found["mainScrolls"] and not found["pageScrolls"], found  # one scroll: main


ORIGIN_FREE = """() => [...document.querySelectorAll("#results .merged .line")].map((r) => {
    const c = r.cloneNode(true);
    const o = c.querySelector(".src");
    const origin = o.title;
    o.remove();
    return [origin, c.textContent.trim()];
})"""


@pytest.fixture
def interleaved(web_worker: Worker) -> Iterator[list[list[str]]]:
    """merge-a/b/c.log: timestamps interleaved across the three, one line with a stack
    line without a timestamp after it. Returns the records (a timestamped line and what
    goes with it) in time order."""
    names = ["merge-a.log", "merge-b.log", "merge-c.log"]
    per: dict[str, list[str]] = {n: [] for n in names}
    ordered = []
    for i in range(30):
        record = [f"2024-12-17 14:00:{i:02d} INFO merge-probe {i:02d}"]
        if i == 10:
            record.append("    at merge-probe stack frame of 10")
        per[names[(i * i + i // 2) % 3]] += record  # a b c b a a a b c b a a ...
        ordered.append(record)
    paths = [web_worker.root / n for n in names]
    for p in paths:
        p.write_text("".join(x + "\n" for x in per[p.name]))
        p.chmod(0o644)
    yield ordered
    for p in paths:
        p.unlink()


def test_results_merged_by_time_across_hosts(
    page: Page, live: LiveServer, web_worker: Worker, interleaved: list[list[str]]
) -> None:
    glob = f"{web_worker.root}/merge-*.log"
    q = f"hosts=web1,web2&path={glob}&pattern=merge-probe"
    before = live.audit.head()
    sign_in(page, live, "olivia", f"/search?{q}")  # by host first
    expect(page.locator("#progress .label")).to_contain_text("Done: 2 hosts, 6 files, 62 lines")
    expect(page.locator("#results .group-host")).to_have_count(2)
    page.get_by_text("by time").click()  # the grouped answer has no order: asked again
    expect(page.locator("#results .merged .line")).to_have_count(62)
    assert "order=time" in page.url
    rows = page.evaluate(ORIGIN_FREE)
    # Every record twice (web1 and web2 read the same files), in time order; the stack
    # line right after its predecessor from the same host and file.
    expected = [x.strip() for rec in interleaved for _ in (1, 2) for x in rec]
    assert [text for _, text in rows] == expected
    dated = [origin.split(":")[0] for origin, text in rows if text.startswith("2024")]
    assert all({dated[k], dated[k + 1]} == {"web1", "web2"} for k in range(0, 60, 2)), dated
    stacks = [k for k, (_, text) in enumerate(rows) if text.startswith("at merge-probe")]
    assert len(stacks) == 2 and all(rows[k][0] == rows[k - 1][0] for k in stacks)
    # Back to by host and again by time: shown from what the page has, not asked again.
    page.get_by_text("by host").click()
    expect(page.locator("#results .group-host")).to_have_count(2)
    page.get_by_text("by time").click()
    expect(page.locator("#results .merged .line")).to_have_count(62)
    searches = [r for r in live.since(before) if r.action == "search" and r.event == "read"]
    assert [r.params.get("order") for r in searches] == [None, "time"]


def test_a_merge_past_its_line_cap_leaves_files_out_and_says_which(
    page: Page, live: LiveServer, web_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logtorukun.web import api

    monkeypatch.setattr(api, "MAX_MERGED_LINES", 40)  # one file of 30 fits, two do not
    q = f"hosts=web1,web2&path={web_worker.app_log}&pattern=INFO&max=30&order=time"
    sign_in(page, live, "olivia", f"/search?{q}")
    expect(page.locator("#progress .label")).to_contain_text("Done: 2 hosts, 2 files, 60 lines")
    expect(page.locator("#results .merged .line")).to_have_count(30)
    note = page.locator("#results .notice.warn", has_text="Not merged")
    expect(note).to_have_count(1)
    expect(note).to_contain_text("over 40 lines")
    expect(note).to_contain_text(f":{web_worker.app_log}")
    merged_host = page.locator("#results .merged .line .src").first.inner_text().split(" ")[0]
    assert merged_host in ("web1", "web2")
    left = "web2" if merged_host == "web1" else "web1"
    expect(note).to_contain_text(f"{left}:{web_worker.app_log}")
