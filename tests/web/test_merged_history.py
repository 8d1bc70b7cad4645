"""The merged view's paging back and download through the API, against a real worker:
where each source's shown lines begin (exactly), a page's cursors, and the refusals: a
file that is not the source's log, a rotated file the user has no grant on, a download
without the `download` grant; each audited per source."""

from __future__ import annotations

from pathlib import Path

from tests.support.sshd import Worker
from tests.web.support import LiveServer
from tests.web.test_merged import A, B, C, _srcs, three

__all__ = ["three"]  # the fixture, shared with test_merged.py


def test_a_tail_says_where_each_file_s_shown_lines_begin(
    live: LiveServer, three: list[Path]
) -> None:
    srcs = _srcs(three)
    doc = live.client("olivia").get("/api/merged/tail", params={"src": srcs, "lines": 2}).json()
    assert doc["lines"] == [A[3], A[4]]
    # a shows its last two lines, b and c nothing: b and c begin at their ends
    a_start = sum(len(x) + 1 for x in A[:3])
    sizes = [p.stat().st_size for p in three]
    want = [a_start, sizes[1], sizes[2]]
    assert [s["start"] for s in doc["sources"]] == [
        f"{p.stat().st_ino}:{off}" for p, off in zip(three, want, strict=True)
    ]


def test_a_page_back_and_its_cursors(live: LiveServer, three: list[Path]) -> None:
    srcs, files = _srcs(three)[1:], three[1:]  # b and c: B0 02, C0 03, B1 05, C1 06
    c = live.client("olivia")
    doc = c.get("/api/merged/tail", params={"src": srcs, "lines": 2}).json()
    assert doc["lines"] == [B[1], C[1]]
    at = [f"{s['start']}:{p}" for s, p in zip(doc["sources"], files, strict=True)]
    ino = [p.stat().st_ino for p in files]
    assert at == [f"{ino[0]}:{len(B[0]) + 1}:{files[0]}", f"{ino[1]}:{len(C[0]) + 1}:{files[1]}"]
    head = live.audit.head()
    # One line a page: C0 is the newer of the two older lines; b stays where it was.
    page = c.get("/api/merged/history", params={"src": srcs, "at": at, "lines": 1}).json()
    assert (page["lines"], page["src"]) == ([C[0]], [1])
    assert [s["at"] for s in page["sources"]] == [at[0], f"{ino[1]}:0:{files[1]}"]
    at = [s["at"] for s in page["sources"]]
    page = c.get("/api/merged/history", params={"src": srcs, "at": at, "lines": 1}).json()
    assert (page["lines"], page["src"]) == ([B[0]], [0])
    # c was at its start and there is no older file: it is done
    at = [s["at"] for s in page["sources"]]
    assert at == [f"{ino[0]}:0:{files[0]}", None]
    page = c.get("/api/merged/history", params={"src": srcs[0], "at": at[0]}).json()
    assert page["lines"] == [] and [s["at"] for s in page["sources"]] == [None]
    recs = live.since(head)
    parents = [r for r in recs if r.action == "merged_history" and r.event == "read"]
    reads = [r for r in recs if r.action == "history" and r.event == "read"]
    assert len(parents) == 3 and len(reads) == 5
    seqs = [p.seq for p in parents]
    assert sorted(r.params["merged"] for r in reads) == sorted([*seqs[:2], *seqs])
    assert all(live.end_of(r.seq).event == "read_end" for r in parents + reads)


def test_paging_back_refuses_what_is_not_the_source_s_log(
    live: LiveServer, web_worker: Worker, three: list[Path]
) -> None:
    c = live.client("olivia")
    src = f"web1:{three[0]}"
    other = f"1:10:{three[1]}"  # another log of the same host
    r = c.get("/api/merged/history", params={"src": [src], "at": [other]})
    assert r.status_code == 422 and "is not" in r.json()["reason"]
    r = c.get("/api/merged/history", params={"src": [src, f"web2:{three[1]}"], "at": ["1:1:x"]})
    assert r.status_code == 422 and "one INODE:OFFSET:FILE per src (2), not 1" in r.json()["reason"]
    r = c.get("/api/merged/history", params={"src": [src], "at": [f"1:x:{three[0]}"]})
    assert r.status_code == 422 and "is not INODE:OFFSET:FILE" in r.json()["reason"]


def test_a_rotated_file_needs_its_own_grant(live: LiveServer, web_worker: Worker) -> None:
    """rita may read app.log, not app.log.1 (the worker's own, left as it is): naming it
    as where to page back from gives nothing of it, says why, and the source's audit
    record says it was refused."""
    log = web_worker.app_log
    rotated = log.with_name(log.name + ".1")
    head = live.audit.head()
    at = f"{rotated.stat().st_ino}:{rotated.stat().st_size}:{rotated}"
    r = live.client("rita").get("/api/merged/history", params={"src": [f"web1:{log}"], "at": [at]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["lines"] == [] and doc["sources"][0]["at"] is None
    assert doc["sources"][0]["error"].startswith(f"{rotated}: ")
    read = next(x for x in live.since(head) if x.action == "history" and x.event == "read")
    assert live.end_of(read.seq).outcome["refused"]  # type: ignore[index]


def test_a_merged_download_needs_download_on_every_source(
    live: LiveServer, web_worker: Worker, three: list[Path]
) -> None:
    log = f"web1:{web_worker.app_log}"
    r = live.client("rita").get("/api/merged/tail", params={"src": [log], "download": "true"})
    assert r.status_code == 403 and "download" in r.json()["reason"]
    head = live.audit.head()
    srcs = _srcs(three)
    r = live.client("olivia").get("/api/merged/tail", params={"src": srcs, "download": "true"})
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="merged_tail.log"'
    assert r.text.splitlines()[0] == f"{srcs[0]}\t{A[0]}" and len(r.text.splitlines()) == 9
    recs = live.since(head)
    parent = next(x for x in recs if x.action == "merged_tail")
    reads = [x for x in recs if x.event == "read" and x.params.get("merged") == parent.seq]
    assert len(reads) == 3 and all(x.params["download"] is True for x in [parent, *reads])
    assert live.end_of(parent.seq).outcome["download"] is True  # type: ignore[index]
