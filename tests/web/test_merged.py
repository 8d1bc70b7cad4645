"""The merged view's API against a real sshd worker: several sources interleaved by time,
each line tagged with its source; refusals name the sources; the number of sources is
bounded; each source read is audited; a merged follow delivers each source's appended
lines exactly once, tagged with the right source."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import Worker
from tests.web.support import LiveServer
from tests.web.test_api import SSE

A = [
    "2024-12-17 14:00:01 INFO a1",
    "2024-12-17 14:00:04 ERROR a2 boom",
    "    at one()",
    "    at two()",
    "2024-12-17 14:00:07 INFO a3",
]
B = ["2024-12-17 14:00:02 INFO b1", "2024-12-17 14:00:05 WARN b2"]
C = ["2024-12-17T14:00:03Z INFO c1", "2024-12-17T23:00:06+09:00 INFO c2"]  # c2: 14:00:06 UTC


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


def _srcs(paths: list[Path]) -> list[str]:
    """a on web1, b on web2, c on web1 again: one host and many."""
    return [f"web1:{paths[0]}", f"web2:{paths[1]}", f"web1:{paths[2]}"]


def test_three_sources_interleave_by_time_each_read_audited(
    live: LiveServer, three: list[Path]
) -> None:
    before = live.audit.head()
    r = live.client("olivia").get("/api/merged/tail", params={"src": _srcs(three), "lines": 50})
    assert r.status_code == 200, r.text
    doc = r.json()
    labels = [s["label"] for s in doc["sources"]]
    assert labels == _srcs(three)
    got = [(labels[i], line) for i, line in zip(doc["src"], doc["lines"], strict=True)]
    a, b, c = labels
    assert got == [
        (a, A[0]),
        (b, B[0]),
        (c, C[0]),
        (a, A[1]),
        (a, A[2]),  # the stack trace stays with its error line
        (a, A[3]),
        (b, B[1]),
        (c, C[1]),
        (a, A[4]),
    ]
    assert doc["count"] == 9 and not doc["truncated"] and doc["notes"] == []
    assert all(":" in s["pos"] for s in doc["sources"])  # where a merged follow goes on
    recs = live.since(before)
    parent = next(x for x in recs if x.action == "merged_tail")
    assert parent.decision == "allow" and parent.params["sources"] == labels
    reads = [x for x in recs if x.event == "read" and x.params.get("merged") == parent.seq]
    assert sorted((x.host, x.source) for x in reads) == sorted(
        (lb.split(":", 1)[0], lb.split(":", 1)[1]) for lb in labels
    )
    for x in [parent, *reads]:
        end = live.end_of(x.seq)
        assert end.event == "read_end" and end.outcome is not None
    assert live.end_of(parent.seq).outcome["lines"] == 9  # type: ignore[index]


def test_a_tail_keeps_the_newest_merged_lines(live: LiveServer, three: list[Path]) -> None:
    r = live.client("olivia").get("/api/merged/tail", params={"src": _srcs(three), "lines": 2})
    doc = r.json()
    # Each source's last 2 lines, merged, then the last 2 of the merge; a's last two are
    # "    at two()" (its error line is older than the window) and a3, kept together.
    assert doc["lines"] == [A[3], A[4]]
    assert not doc["truncated"] and doc["notes"] == []  # a tail's older lines are not news


def test_merged_search(live: LiveServer, three: list[Path]) -> None:
    r = live.client("olivia").get(
        "/api/merged/grep", params={"src": _srcs(three), "pattern": "INFO"}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["lines"] == [A[0], B[0], C[0], C[1], A[4]]
    assert doc["src"] == [0, 1, 2, 2, 0]
    first = live.client("olivia").get(
        "/api/merged/grep", params={"src": _srcs(three), "pattern": "INFO", "max": 3}
    )
    assert first.json()["lines"] == [A[0], B[0], C[0]]  # the first 3 matches by time
    assert first.json()["truncated"] and "2 later merged lines left out" in first.text


def test_a_source_not_allowed_refuses_the_whole_view_naming_it(
    live: LiveServer, three: list[Path], web_worker: Worker
) -> None:
    # rita may tail web1's app.log only.
    allowed = f"web1:{web_worker.app_log}"
    other = f"web1:{three[0]}"
    ungranted_host = f"db1:{web_worker.app_log}"
    before = live.audit.head()
    r = live.client("rita").get(
        "/api/merged/tail", params={"src": [allowed, other, ungranted_host]}
    )
    assert r.status_code == 403
    reason = r.json()["reason"]
    assert other in reason and ungranted_host in reason and "unknown host 'db1'" in reason
    assert allowed + " " not in reason and "Remove them" in reason
    # A host that does not exist reads exactly like one without a grant.
    r2 = live.client("rita").get(
        "/api/merged/tail", params={"src": [allowed, f"nosuch:{web_worker.app_log}"]}
    )
    assert r2.status_code == 403 and "(unknown host 'nosuch')" in r2.json()["reason"]
    recs = live.since(before)
    refused = [(x.host, x.source) for x in recs if x.event == "refused"]
    assert ("web1", str(three[0])) in refused and ("db1", str(web_worker.app_log)) in refused
    assert not [x for x in recs if x.event == "read"]  # nothing was read


def test_too_many_sources_is_refused_and_audited(live: LiveServer, web_worker: Worker) -> None:
    from logtorukun.web.merge import MAX_SOURCES

    srcs = [f"web1:{web_worker.root}/f{i}.log" for i in range(MAX_SOURCES + 1)]
    c = live.client("olivia")
    before = live.audit.head()
    for route in ("tail", "follow"):
        r = c.get(f"/api/merged/{route}", params={"src": srcs})
        assert r.status_code == 422
        assert r.json()["reason"].startswith(f"src: at most {MAX_SOURCES} sources")
    recs = live.since(before)
    assert [x.event for x in recs] == ["refused", "refused"]
    assert not live.server.hub.upstreams  # no follow was started
    bad = c.get("/api/merged/tail", params={"src": ["web1"]})
    assert bad.status_code == 422 and "is not HOST:SOURCE" in bad.json()["reason"]
    twice = c.get("/api/merged/tail", params={"src": [srcs[0], srcs[0]]})
    assert twice.status_code == 422 and "given twice" in twice.json()["reason"]


def test_an_unreachable_source_is_a_note_the_others_are_shown(
    live: LiveServer, three: list[Path]
) -> None:
    r = live.client("olivia").get(
        "/api/merged/tail", params={"src": [f"web1:{three[1]}", f"down:{three[0]}"]}
    )
    assert r.status_code == 200
    doc = r.json()
    assert doc["lines"] == B and doc["sources"][1]["status"] == 502
    assert doc["notes"][0].startswith(f"down:{three[0]}: ")


def test_merged_follow_delivers_each_appended_line_once_with_its_source(
    live: LiveServer, three: list[Path]
) -> None:
    c = live.client("olivia")
    srcs = _srcs(three)
    tail = c.get("/api/merged/tail", params={"src": srcs}).json()
    froms = [f"{i}:{s['pos']}" for i, s in enumerate(tail["sources"])]
    follow = SSE(c, "/api/merged/follow", {"src": srcs, "from": froms})
    try:
        assert follow.status == 200, follow.events
        ready = follow.events[0][1]
        assert [s["label"] for s in ready["sources"]] == srcs and ready["failed"] == []
        want: list[tuple[int, str]] = []
        for n in range(5):
            for i, p in enumerate(three):
                line = f"2024-12-17 14:01:0{n} INFO new {i}.{n}"
                with open(p, "a") as f:
                    f.write(line + "\n")
                want.append((i, line))

        def got() -> list[tuple[int, str]]:
            return [(d["src"], ln) for e, d in follow.events if e == "lines" for ln in d["lines"]]

        deadline = time.monotonic() + 20
        while len(got()) < len(want):
            assert time.monotonic() < deadline, follow.events
            time.sleep(0.02)
        time.sleep(0.3)  # one heartbeat more: nothing is delivered twice
        assert sorted(got()) == sorted(want)
        for i in range(3):  # and each source's lines in their order
            assert [ln for s, ln in got() if s == i] == [ln for s, ln in want if s == i]
    finally:
        follow.close()
    start = follow.audit
    assert live.end_of(start).event == "follow_end"
    live.quiet()  # every per-source follow_start has its follow_end


def test_merged_follow_refusals(live: LiveServer, three: list[Path], web_worker: Worker) -> None:
    rita = SSE(live.client("rita"), "/api/merged/follow", {"src": [f"web1:{web_worker.app_log}"]})
    assert rita.status == 403 and "follow" in rita.body["reason"]
    olivia = live.client("olivia")
    unit_from = SSE(olivia, "/api/merged/follow", {"src": _srcs(three), "from": ["7:1:2:3"]})
    assert unit_from.status == 422 and "source 7 does not exist" in unit_from.body["reason"]


def test_signing_out_ends_a_merged_follow_for_good(live: LiveServer, three: list[Path]) -> None:
    c = live.client("olivia")
    csrf = c.get("/api/me").json()["csrf"]
    follow = SSE(c, "/api/merged/follow", {"src": _srcs(three)})
    try:
        assert follow.status == 200
        assert live.server.hub.per_user["olivia"] == 1  # one follow, whatever its sources
        assert c.post("/logout", data={"csrf": csrf}).status_code == 303
        deadline = time.monotonic() + 10
        while not [d for e, d in follow.events if e == "end"]:
            assert time.monotonic() < deadline, follow.events
            time.sleep(0.02)
        end = next(d for e, d in follow.events if e == "end")
        assert end["retry"] is False and "sign in again" in end["reason"]
    finally:
        follow.close()
    record = live.end_of(follow.audit)
    assert record.outcome is not None and "credentials re-checked" in record.outcome["reason"]
    live.quiet()
