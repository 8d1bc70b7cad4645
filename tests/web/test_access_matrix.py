"""Every (user, host, source, capability) cell: allowed or refused as the roles say,
and every cell leaves its audit record with the same decision.

The expectation is written out from the roles in tests/web/support.py by hand, not
computed with the code under test.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.sshd import Worker
from tests.web.support import USERS, LiveServer

HOSTS = ("web1", "web2", "db1")
CAPS = ("tail", "search", "follow", "download")


def expected(user: str, host: str, source: str, cap: str, root: Path) -> bool:
    """The roles of tests/web/support.py, restated."""
    name = Path(source).name
    in_root = Path(source).parent == root
    allowed = False
    for role in USERS[user]:
        if role == "ops":
            allowed |= host in ("web1", "web2") and in_root and cap in CAPS
        elif role == "reader":
            allowed |= host == "web1" and source == str(root / "app.log") and cap == "tail"
        elif role == "dbsearch":
            allowed |= host == "db1" and in_root and name.endswith(".log") and cap == "search"
    if cap == "download":  # a download is a tail that needs both capabilities
        allowed = allowed and expected(user, host, source, "tail", root)
    return allowed


# Hosts on which some role of the user grants anything at all; any other host must
# answer exactly like a host that does not exist (404), so names cannot be probed.
GRANTED_HOSTS = {"ops": {"web1", "web2"}, "reader": {"web1"}, "dbsearch": {"db1"}}


def refusal(user: str, host: str) -> int:
    seen = any(host in GRANTED_HOSTS.get(role, set()) for role in USERS[user])
    return 403 if seen else 404


def request(c: httpx.Client, host: str, source: str, cap: str) -> int:
    if cap == "tail":
        return c.get(f"/api/hosts/{host}/tail", params={"path": source, "lines": 2}).status_code
    if cap == "download":
        return c.get(
            f"/api/hosts/{host}/tail", params={"path": source, "lines": 2, "download": "true"}
        ).status_code
    if cap == "search":
        return c.get(
            f"/api/hosts/{host}/grep", params={"path": source, "pattern": "ERROR", "max": 2}
        ).status_code
    with c.stream("GET", f"/api/hosts/{host}/follow", params={"path": source}) as r:
        return r.status_code


def test_access_matrix(live: LiveServer, web_worker: Worker) -> None:
    root = web_worker.root
    sources = [str(root / "app.log"), str(root / "app.log.1"), "/var/log/syslog"]
    cells = 0
    wrong: list[str] = []
    for user in USERS:
        c = live.client(user)
        for host in HOSTS:
            for source in sources:
                for cap in CAPS:
                    before = live.audit.head()
                    status = request(c, host, source, cap)
                    allow = expected(user, host, source, cap, root)
                    cells += 1
                    want = 200 if allow else refusal(user, host)
                    if status != want:
                        wrong.append(f"{user} {cap} {host}:{source} -> {status}, want {want}")
                    first = live.since(before)[0]
                    want_event = (
                        ("follow_start" if cap == "follow" else "read") if allow else "refused"
                    )
                    if (first.event, first.decision, first.user, first.host, first.source) != (
                        want_event,
                        "allow" if allow else "deny",
                        user,
                        host,
                        source,
                    ):
                        wrong.append(f"{user} {cap} {host}:{source}: audit {first}")
                    if cap == "follow" and first.event == "follow_start":
                        live.end_of(first.seq)  # let go: its follow_end is written
    assert cells == len(USERS) * len(HOSTS) * len(sources) * len(CAPS)
    assert not wrong, "\n".join(wrong)


def test_pages_and_deep_links_recheck_the_grant(live: LiveServer, web_worker: Worker) -> None:
    app_log = str(web_worker.app_log)
    html = {"accept": "text/html"}
    r = live.client("rita").get("/view", params={"host": "web1", "path": app_log}, headers=html)
    assert r.status_code == 200 and 'data-caps="tail"' in r.text
    for user, host, path, status in (
        ("rita", "web2", app_log, 404),  # no grant on the host: as if it did not exist
        ("nobody", "web1", app_log, 404),
        ("rita", "web1", str(web_worker.root / "app.log.1"), 403),
    ):
        c = live.client(user)
        before = live.audit.head()
        r = c.get("/view", params={"host": host, "path": path}, headers=html)
        assert r.status_code == status, r.text
        assert ("Not allowed" in r.text) == (status == 403)
        assert "2024-12-17" not in r.text  # no log data, only the refusal
        got = [(x.event, x.action, x.user, x.decision) for x in live.since(before)]
        assert got == [("refused", "view", user, "deny")]
    assert live.client("rita").get("/audit", headers=html).status_code == 403
    assert live.client("both").get("/audit", headers=html).status_code == 200
    assert live.client("alice").get("/search", headers=html).status_code == 403
    r = live.anon().get("/view", params={"host": "web1", "path": app_log}, headers=html)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Fview")
