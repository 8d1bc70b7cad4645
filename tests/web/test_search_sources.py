"""GET /api/search/sources (what the search page suggests) against its limits: how many
hosts' workers one request asks, how many listings are kept, bad input, no grant."""

from __future__ import annotations

import pytest

from logtorukun.web import suggest
from logtorukun.web.suggest import Listings, _dir_globs, default_glob
from tests.support.sshd import Worker
from tests.web.support import LiveServer


def test_one_request_asks_at_most_max_listed_hosts(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suggest, "MAX_LISTED_HOSTS", 2)
    live.server.listings = Listings(ttl=3600, size=2)
    before = live.audit.head()
    body = live.client("olivia").get("/api/search/sources", params={"hosts": "*"}).json()
    assert body["hosts"] == ["web1", "web2", "down"] and body["listed"] == ["web1", "web2"]
    assert body["failed"] == []  # down was not asked at all
    starts = [r for r in live.since(before) if r.action == "search_sources" and r.event == "read"]
    assert len(starts) == 1 and starts[0].params["listed"] == ["web1", "web2"]
    # The cache holds at most `size` listings: a third (host, user) pushes the one that
    # came first out (web1's or web2's, whichever answered first).
    live.client("dan").get("/api/search/sources", params={"hosts": "*"}).raise_for_status()
    kept = list(live.server.listings._kept)
    assert len(kept) == 2 and kept[1] == ("db1", "dan") and kept[0][1] == "olivia", kept


def test_bad_hosts_and_no_grant_are_refused_and_audited(live: LiveServer) -> None:
    before = live.audit.head()
    c = live.client("olivia")
    r = c.get("/api/search/sources", params={"hosts": "web\x01"})
    assert r.status_code == 422 and r.json()["reason"].startswith("hosts: ")
    r = c.get("/api/search/sources", params={"hosts": ",".join(["w"] * 17)})
    assert r.status_code == 422 and "at most 16" in r.json()["reason"]
    r = c.get("/api/search/sources", params={"hosts": "db*"})  # olivia may not search db1
    assert r.status_code == 404 and r.json()["reason"] == "no host you may search matches 'db*'"
    r = live.client("rita").get("/api/search/sources")  # tail only: no search anywhere
    assert r.status_code == 404
    refused = [r for r in live.since(before) if r.action == "search_sources"]
    assert [(r.user, r.decision) for r in refused] == [
        ("olivia", "deny"),
        ("olivia", "deny"),
        ("olivia", "deny"),
        ("rita", "deny"),
    ]


def test_a_listing_names_only_what_the_grant_covers(live: LiveServer, web_worker: Worker) -> None:
    """dan may search *.log on label:db: app.log.1 and app.log.2.gz exist on the worker
    (its policy admits them) and are listed for olivia, never for dan."""
    root = web_worker.root
    dan = live.client("dan").get("/api/search/sources").json()
    olivia = live.client("olivia").get("/api/search/sources").json()
    dan_files = {f["path"] for f in dan["files"]}
    assert dan_files and all(p.endswith(".log") for p in dan_files)
    assert {f"{root}/app.log.1", f"{root}/app.log.2.gz"} <= {f["path"] for f in olivia["files"]}
    assert not {f"{root}/app.log.1", f"{root}/app.log.2.gz"} & dan_files
    assert dan["globs"][0]["glob"] == f"{root}/*.log"
    assert all(f["hosts"] == ["db1"] and f["search"] for f in dan["files"])
    assert dan["default"] == f"{root}/*.log"


def test_the_default_matches_a_file_of_the_demo_layout() -> None:
    """The demo's admin may read everything (`sources = ["*"]`: no glob to offer); its
    logs are app.log, app.log.1 and app.log.2.gz in one directory off /var/log."""
    files = ["/d/logs/app.log", "/d/logs/app.log.1", "/d/logs/app.log.2.gz"]
    globs = _dir_globs(files)
    assert globs == ["/d/logs/*.log", "/d/logs/*"]
    assert default_glob(globs, files) == "/d/logs/*.log"
    assert default_glob([], ["/var/log/nginx/access.log"]) == "/var/log/**/*.log"
    assert default_glob(["/srv/**/*.txt"], ["/d/x.1"]) == "/d/x.1"  # nothing matches: a file
    assert default_glob([], []) is None
