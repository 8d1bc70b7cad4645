"""What a client may learn: a host without a grant looks exactly like an unknown host
on every route and page; every bad parameter is a 422 naming it (an invalid regex
included, found before any worker is asked); no internal path, exception text or
traceback reaches a client, while the server log keeps the details with the audit ref.
Against a real `logtorukun serve` and a real sshd worker."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.audit import AuditStore
from tests.support.sshd import Worker
from tests.web.support import Served, served

USERS = {"rita": ["reader"], "olivia": ["ops"], "alice": ["auditor"]}


@pytest.fixture(scope="module")
def srv(web_worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests that only read: each signs in as a user of its own
    (rita, root, olivia) and counts only that user's records."""
    users = {**USERS, "root": ["ops", "auditor"]}
    with served(tmp_path_factory.mktemp("disclosure"), web_worker, users) as s:
        yield s


def _store(srv: Served) -> AuditStore:
    return AuditStore(srv.config_path.parent / "logtorukun.db", readonly=True)


def _routes(root: Path, host: str) -> list[tuple[str, dict[str, str]]]:
    app = str(root / "app.log")
    return [
        (f"/api/hosts/{host}/tail", {"path": app}),
        (f"/api/hosts/{host}/tail", {"path": "relative"}),  # bad too: the host comes first
        (f"/api/hosts/{host}/grep", {"path": app, "pattern": "x"}),
        (f"/api/hosts/{host}/grep", {"path": app, "pattern": "a(", "regex": "true"}),
        (f"/api/hosts/{host}/follow", {"path": app}),
        (f"/api/hosts/{host}/sources", {}),
        ("/view", {"host": host, "path": app}),
        ("/api/search", {"hosts": host, "path": "/**", "pattern": "x"}),
    ]


def test_a_host_without_a_grant_answers_like_an_unknown_host(
    web_worker: Worker, srv: Served
) -> None:
    # rita may read web1 only; web2 exists, "ghost" does not.
    for browser in (False, True):
        c = srv.session("rita") if browser else srv.client("rita")
        accept = {"accept": "text/html"} if browser else {}
        try:
            for (route, q1), (route2, q2) in zip(
                _routes(web_worker.root, "web2"), _routes(web_worker.root, "ghost"), strict=True
            ):
                real = c.get(route, params=q1, headers=accept)
                ghost = c.get(route2, params=q2, headers=accept)
                assert real.status_code == ghost.status_code == 404, (route, real.text)
                assert real.text.replace("web2", "ghost") == ghost.text, route
                assert "grant" not in real.text
        finally:
            c.close()
    store = _store(srv)
    try:
        refused = store.query(event="refused", user="rita", host="web2", limit=100)
        per_host = [x for x in refused if x.action != "search"]
        assert len(per_host) == 14  # 7 per-host routes, as API and as pages
        assert all("no role grants anything on host web2" in (x.reason or "") for x in per_host)
        assert all(x.params["status"] == 404 for x in refused)
    finally:
        store.close()


BAD_PARAMETERS = [
    ("/api/audit", {"before": "1" * 23}, "before"),
    ("/api/audit", {"since": "last tuesday"}, "since"),
    ("/api/audit", {"limit": "0"}, "limit"),
    ("/api/audit/export", {"since": "soon"}, "since"),
    ("/api/audit/export", {"format": "xml"}, "format"),
    ("/api/hosts/web1/tail", {"path": "{app}", "lines": "99999999"}, "lines"),
    ("/api/hosts/web1/tail", {"path": "{app}", "until": "x;y"}, "until"),
    ("/api/hosts/web1/tail", {"unit": "-bad"}, "unit"),
    ("/api/hosts/web1/tail", {"container": "a b"}, "container"),
    ("/api/hosts/web1/tail", {"path": "/a/../b"}, "path"),
    ("/api/hosts/web1/grep", {"path": "{app}", "pattern": "a\x01"}, "pattern"),
    ("/api/hosts/web1/grep", {"path": "{app}", "pattern": "x", "max": "-1"}, "max"),
    ("/api/search", {"path": "{app}", "pattern": "x", "max": "0"}, "max"),
    ("/api/search", {"path": "relative", "pattern": "x"}, "path"),
]


def test_every_bad_parameter_is_a_422_naming_it(web_worker: Worker, srv: Served) -> None:
    with srv.client("root") as c:
        for route, params, name in BAD_PARAMETERS:
            q = {k: v.format(app=web_worker.app_log) for k, v in params.items()}
            r = c.get(route, params=q)
            assert r.status_code == 422, (route, params, r.text)
            assert r.json()["reason"].startswith(f"{name}:"), (route, params, r.text)
        assert c.get("/healthz").status_code == 200  # nothing broke on the way
    store = _store(srv)
    try:  # each was audited (a refusal, or a read whose end says 422)
        refused = store.query(event="refused", user="root", limit=100)
        ended = [x for x in store.query(event="read_end", user="root", limit=100)]
        assert len(refused) + len(ended) >= len(BAD_PARAMETERS)
    finally:
        store.close()


def test_invalid_regex_is_422_before_any_worker_is_asked(web_worker: Worker, srv: Served) -> None:
    with srv.client("olivia") as c:
        app = str(web_worker.app_log)
        for route, q in (
            ("/api/hosts/web1/grep", {"path": app}),
            ("/api/hosts/down/grep", {"path": app}),  # unreachable: proves no worker call
            ("/api/search", {"hosts": "web*", "path": "/**"}),
        ):
            for bad, why in (
                ("a(b", "Unmatched ("),
                ("x{3,1}", "Invalid content"),
                ("\\1", "back"),
            ):
                r = c.get(route, params={**q, "pattern": bad, "regex": "true"})
                assert r.status_code == 422, (route, bad, r.text)
                assert r.json()["reason"].startswith("invalid pattern: ")
                assert why in r.json()["reason"]
                assert "/usr/bin" not in r.json()["reason"]
        # grep -E accepts what GNU grep accepts (a leading '*' is a literal there).
        r = c.get("/api/hosts/web1/grep", params={"path": app, "pattern": "*x", "regex": "true"})
        assert r.status_code == 200


def test_no_internal_path_or_exception_text_reaches_a_client(
    web_worker: Worker, tmp_path: Path
) -> None:
    db = tmp_path / "logtorukun.db"
    # A server of its own (it blocks the database), which waits 1 s, not 5, for a lock.
    with served(tmp_path, web_worker, USERS, busy_timeout=1.0) as srv, srv.client("olivia") as c:
        app = {"path": str(web_worker.app_log)}
        assert c.get("/api/hosts/web1/tail", params=app).status_code == 200
        # Another process holds the database's write lock: every write fails.
        blocker = sqlite3.connect(db, timeout=1)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            anon = srv.client()
            for r in (
                c.get("/api/hosts/web1/tail", params=app),
                anon.get("/api/hosts/web1/tail", params=app),
                anon.get(
                    "/api/me", headers={"authorization": "Bearer ltk_000000000000_" + "x" * 43}
                ),
            ):
                assert r.status_code == 503, r.text
                assert str(tmp_path) not in r.text and "database" not in r.text
                assert "audit trail cannot be written" in r.text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert c.get("/api/hosts/web1/tail", params=app).status_code == 200
        log = srv.server_log()
        assert str(db) in log and "not written" in log  # the details are in the server log
