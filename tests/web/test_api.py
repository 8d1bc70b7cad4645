"""The JSON API against a real sshd worker: reads, errors, tokens, CSRF, headers, follow."""

from __future__ import annotations

import json
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from logtorukun.web.auth import AuthStore
from tests.support.sshd import Worker
from tests.web.conftest import XSS_LINES
from tests.web.support import LiveServer, login, running, write_config


def test_tail_returns_the_last_lines_and_audits_before_and_after(
    live: LiveServer, web_worker: Worker
) -> None:
    c = live.client("olivia")
    r = c.get("/api/hosts/web1/tail", params={"path": str(web_worker.app_log), "lines": 5})
    assert r.status_code == 200
    body = r.json()
    expected = web_worker.app_log.read_text().splitlines()[-5:]
    assert body["lines"] == expected
    assert body["truncated"] is False and body["count"] == 5
    start = live.audit.query(limit=5000, event="read", user="olivia", host="web1")
    rec = next(x for x in start if x.seq == body["audit"])
    assert rec.action == "tail" and rec.decision == "allow"
    assert rec.source == str(web_worker.app_log) and rec.params["lines"] == 5
    end = [x for x in live.audit.query(event="read_end", limit=5000) if x.ref == rec.seq]
    assert len(end) == 1
    assert end[0].outcome is not None and end[0].outcome["lines"] == 5
    assert end[0].outcome["bytes"] > 0 and "duration_ms" in end[0].outcome


def test_grep_fixed_string_regex_and_invert(live: LiveServer, web_worker: Worker) -> None:
    c = live.client("olivia")
    path = str(web_worker.app_log)
    r = c.get("/api/hosts/web1/grep", params={"path": path, "pattern": "order 80412"})
    assert r.json()["lines"] == [
        "2024-12-17 14:03:05 ERROR [payments] charge failed for order 80412"
    ]
    # Fixed string by default: '.' is a dot, not any character.
    r = c.get("/api/hosts/web1/grep", params={"path": path, "pattern": "order.80412"})
    assert r.json()["lines"] == []
    r = c.get(
        "/api/hosts/web1/grep", params={"path": path, "pattern": "order.80412", "regex": "true"}
    )
    assert len(r.json()["lines"]) == 1
    r = c.get("/api/hosts/web1/grep", params={"path": path, "pattern": "-e", "max": 3})
    assert r.status_code == 200  # a pattern starting with '-' is data
    # A regex grep cannot compile is the caller's mistake: 422 naming it, not a 502.
    r = c.get("/api/hosts/web1/grep", params={"path": path, "pattern": "a(b", "regex": "true"})
    assert r.status_code == 422 and "'a(b'" in r.json()["reason"], r.text
    r = c.get(
        "/api/hosts/web1/grep",
        params={"path": path, "pattern": "INFO", "invert": "true", "max": 10000},
    )
    lines = r.json()["lines"]
    assert lines and not any("INFO" in ln for ln in lines)
    r = c.get(
        "/api/hosts/web1/grep",
        params={"path": path, "pattern": "payments", "ignore_case": "true", "max": 2},
    )
    assert len(r.json()["lines"]) == 2


def test_time_range_uses_the_gates_range(live: LiveServer, web_worker: Worker) -> None:
    c = live.client("olivia")
    r = c.get(
        "/api/hosts/web1/tail",
        params={
            "path": str(web_worker.app_log),
            "since": "2024-12-17 14:03:05",
            "until": "2024-12-17 14:03:18",
        },
    )
    lines = r.json()["lines"]
    assert lines[0].startswith("2024-12-17 14:03:05 ERROR")
    assert lines[-1].startswith("2024-12-17 14:03:17")
    assert any(ln.startswith("Traceback") for ln in lines)


def test_sources_are_filtered_by_grant(live: LiveServer, web_worker: Worker) -> None:
    all_files = live.client("olivia").get("/api/hosts/web1/sources").json()["files"]
    assert {Path(f["path"]).name for f in all_files} >= {"app.log", "app.log.1", "xss.log"}
    rita = live.client("rita").get("/api/hosts/web1/sources").json()["files"]
    assert [f["path"] for f in rita] == [str(web_worker.app_log)]
    assert rita[0]["capabilities"] == ["tail"]


def test_hosts_list_only_granted_hosts_and_reachability(live: LiveServer) -> None:
    hosts = live.client("olivia").get("/api/hosts", params={"probe": "true"}).json()["hosts"]
    by_name = {h["name"]: h for h in hosts}
    assert set(by_name) == {"web1", "web2", "down"}
    assert by_name["web1"]["up"] is True
    assert by_name["down"]["up"] is False and by_name["down"]["error"]
    assert [h["name"] for h in live.client("rita").get("/api/hosts").json()["hosts"]] == ["web1"]
    assert live.client("nobody").get("/api/hosts").json()["hosts"] == []


@pytest.mark.parametrize(
    ("user", "host", "params", "status", "reason"),
    [
        ("rita", "web1", {"path": "{root}/app.log.1"}, 403, "no role grants"),
        ("rita", "web2", {"path": "{root}/app.log"}, 404, "unknown host 'web2'"),
        ("olivia", "nope", {"path": "{root}/app.log"}, 404, "unknown host"),
        ("olivia", "web1", {"path": "{root}/missing.log"}, 404, "no such file"),
        ("olivia", "web1", {"path": "{root}/../../../secret/shadow"}, 422, "'..'"),
        ("olivia", "web1", {"path": "relative.log"}, 422, "absolute"),
        ("olivia", "web1", {"path": "{root}/app.log", "lines": "0"}, 422, "lines"),
        ("olivia", "web1", {"path": "{root}/app.log", "lines": "1;id"}, 422, "lines"),
        ("olivia", "web1", {}, 422, "exactly one"),
        ("olivia", "web1", {"path": "{root}/app.log", "unit": "x"}, 422, "exactly one"),
        ("olivia", "web1", {"path": "{root}/app.log", "since": "x\ny"}, 422, "control"),
        ("olivia", "web1", {"path": "{root}/app.log", "since": "$(id)"}, 422, "since"),
        ("olivia", "down", {"path": "{root}/app.log"}, 502, "connect"),
        ("olivia", "web1", {"path": "{root}/notes.txt"}, 403, "not allowed by the policy"),
        ("olivia", "web1", {"path": "/etc/passwd"}, 403, "no role grants"),
    ],
)
def test_refusals_have_the_designed_status_reason_and_record(
    live: LiveServer,
    web_worker: Worker,
    user: str,
    host: str,
    params: dict[str, str],
    status: int,
    reason: str,
) -> None:
    c = live.client(user)
    params = {k: v.format(root=web_worker.root) for k, v in params.items()}
    before = live.audit.head()
    r = c.get(f"/api/hosts/{host}/tail", params=params)
    assert r.status_code == status, r.text
    assert reason in r.json()["reason"]
    assert r.json()["error"]
    new = live.since(before, user=user)
    if status in (403, 404, 422) and "policy" not in reason and "no such" not in reason:
        assert [x.event for x in new] == ["refused"]
        assert new[0].decision == "deny" and new[0].params["status"] == status
    else:  # allowed by the web side, refused or failed on the worker: start + end
        assert [x.event for x in new] == ["read", "read_end"]
        assert new[1].outcome is not None and new[1].outcome["status"] == status


def test_no_data_for_signed_out_or_bad_tokens(live: LiveServer, web_worker: Worker) -> None:
    c = live.anon()
    url = "/api/hosts/web1/tail"
    params = {"path": str(web_worker.app_log)}
    assert c.get(url, params=params).status_code == 401
    r = c.get(url, params=params, headers={"authorization": "Bearer ltk_000000000000_" + "x" * 43})
    assert r.status_code == 401 and r.json()["reason"] == "unknown token"
    r = c.get(url, params=params, headers={"cookie": "ltk_session=forged"})
    assert r.status_code == 401
    # One record per refused request (the refusal names the token's problem).
    recs = live.audit.query(event="refused", limit=3)
    assert [x.params["status"] for x in recs] == [401, 401, 401]
    assert recs[1].reason == "unknown token" and recs[1].params["auth"] == "token:000000000000"
    assert not live.audit.query(event="token_used", decision="deny", limit=1)


def test_tokens_work_until_revoked_or_expired(live: LiveServer, web_worker: Worker) -> None:
    auth: AuthStore = live.server.auth
    token, info = auth.create_token("olivia", 3600)
    c = live.anon()
    h = {"authorization": f"Bearer {token}"}
    params: dict[str, str | int] = {"path": str(web_worker.app_log), "lines": 1}
    r = c.get("/api/hosts/web1/tail", params=params, headers=h)
    assert r.status_code == 200
    rec = live.audit.query(user="olivia", event="read", limit=1)[0]
    assert rec.params["auth"] == f"token:{info.id}"
    used = live.audit.query(event="token_used", decision="allow", limit=1)[0]
    assert used.params["token"] == info.id
    auth.revoke_token(info.id)
    r = c.get("/api/hosts/web1/tail", params=params, headers=h)
    assert r.status_code == 401 and r.json()["reason"] == "token revoked"
    old, _ = auth.create_token("olivia", 1)
    time.sleep(1.1)
    r = c.get("/api/hosts/web1/tail", params=params, headers={"authorization": f"Bearer {old}"})
    assert r.status_code == 401 and r.json()["reason"] == "token expired"


def test_log_content_is_data_in_json(live: LiveServer, web_worker: Worker) -> None:
    r = live.client("olivia").get(
        "/api/hosts/web1/tail", params={"path": str(web_worker.root / "xss.log")}
    )
    assert r.headers["content-type"] == "application/json"
    assert r.json()["lines"] == XSS_LINES


def test_download_needs_the_capability_and_is_an_attachment(
    live: LiveServer, web_worker: Worker
) -> None:
    params: dict[str, str | int] = {"path": str(web_worker.app_log), "lines": 3, "download": "true"}
    r = live.client("olivia").get("/api/hosts/web1/tail", params=params)
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.text.splitlines() == web_worker.app_log.read_text().splitlines()[-3:]
    r = live.client("rita").get("/api/hosts/web1/tail", params=params)
    assert r.status_code == 403 and "download" in r.json()["reason"]


def test_truncation_is_reported(make_worker: Any, tmp_path: Path) -> None:
    # A fresh worker: a bridge session reads its policy once, when it starts.
    w = make_worker(name="trunc")
    w.write_policy(w.default_policy(max_lines=50))
    with running(write_config(tmp_path, w), {"olivia": ["ops"]}) as srv:
        r = srv.client("olivia").get(
            "/api/hosts/web1/tail", params={"path": str(w.app_log), "lines": 500}
        )
        body = r.json()
        assert r.status_code == 200 and body["count"] == 50
        assert body["truncated"] is True and "max_lines" in body["note"]
        end = srv.audit.query(event="read_end", limit=1)[0]
        assert end.outcome is not None and end.outcome["truncated"] is True


def test_search_across_hosts_streams_per_host_results(live: LiveServer, web_worker: Worker) -> None:
    c = live.client("olivia")
    r = c.get(
        "/api/search",
        params={"hosts": "label:web", "path": f"{web_worker.root}/*.log", "pattern": "order 80412"},
    )
    assert r.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[0]["type"] == "start" and set(events[0]["hosts"]) == {"web1", "web2", "down"}
    files = [e for e in events if e["type"] == "file" and e["lines"]]
    assert {(e["host"], Path(e["source"]).name) for e in files} == {
        ("web1", "app.log"),
        ("web2", "app.log"),
    }
    errors = [e for e in events if e["type"] == "error"]
    assert [e["host"] for e in errors] == ["down"] and errors[0]["status"] == 502
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert events[-1]["type"] == "end"
    # dan may search only label:db hosts: web hosts are not searched at all.
    r = live.client("dan").get("/api/search", params={"hosts": "*", "path": "/**", "pattern": "x"})
    assert json.loads(r.text.splitlines()[0])["hosts"] == ["db1"]
    # rita has no search grant: the same answer as for hosts that do not exist.
    r = live.client("rita").get("/api/search", params={"path": "/**", "pattern": "x"})
    assert r.status_code == 404 and r.json()["reason"] == "no host you may search matches '*'"


def test_security_headers_and_no_inline_script(live: LiveServer) -> None:
    c = live.client("olivia")
    for path in ("/", "/login", "/api/hosts"):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    html = c.get("/").text
    assert "<script>" not in html and " on" + "click=" not in html
    assert all('src="/static/' in tag for tag in html.split("<script")[1:])


def test_session_cookie_flags(live: LiveServer) -> None:
    c = live.anon()
    form = c.get("/login")
    r = c.post(
        "/login",
        data={
            "user": "olivia",
            "password": "correct horse battery",
            "csrf": form.cookies["ltk_pre"],
        },
    )
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


def test_secure_cookies_use_host_prefix(web_worker: Worker, tmp_path: Path) -> None:
    with running(write_config(tmp_path, web_worker, secure_cookies=True), {"s": ["ops"]}) as srv:
        c = srv.anon()
        form = c.get("/login")
        assert "secure" in form.headers["set-cookie"].lower()
        pre = form.cookies["ltk_pre"]
        # httpx keeps Secure cookies away from http://, as a browser would: send it by hand.
        r = c.post(
            "/login",
            data={"user": "s", "password": "correct horse battery", "csrf": pre},
            headers={"cookie": f"ltk_pre={pre}"},
        )
        assert r.status_code == 303
        assert r.headers["set-cookie"].startswith("__Host-ltk_session=")
        assert "secure" in r.headers["set-cookie"].lower()
        assert "strict-transport-security" in r.headers


def test_login_csrf_and_logout_csrf(live: LiveServer) -> None:
    c = live.anon()
    c.get("/login")
    r = c.post(
        "/login", data={"user": "olivia", "password": "correct horse battery", "csrf": "forged"}
    )
    assert r.status_code == 403 and c.get("/api/me").status_code == 401
    c = live.client("olivia")
    assert c.post("/logout", data={"csrf": "wrong"}).status_code == 403
    assert c.get("/api/me").status_code == 200
    csrf = c.get("/api/me").json()["csrf"]
    evil = c.post("/logout", data={"csrf": csrf}, headers={"origin": "https://evil.example"})
    assert evil.status_code == 403
    assert c.post("/logout", data={"csrf": csrf}).status_code == 303
    assert c.get("/api/me").status_code == 401
    assert live.audit.query(event="logout", user="olivia", limit=1)


def test_login_throttled_per_user(live: LiveServer) -> None:
    c = live.anon()
    for _ in range(5):
        assert login(c, "both", "wrong password").status_code == 401
    r = login(c, "both")  # right password, but too late
    assert r.status_code == 429 and "Too many" in r.text
    recs = live.audit.query(event="login_failed", limit=6)
    assert recs[0].reason is not None and recs[0].reason.startswith("throttled")
    assert all(x.params["name"] == "both" for x in recs)
    live.server.throttle.succeeded("both", "127.0.0.1")  # leave the user usable


def test_open_redirect_refused(live: LiveServer) -> None:
    c = live.anon()
    form = c.get("/login")
    r = c.post(
        "/login",
        data={
            "user": "olivia",
            "password": "correct horse battery",
            "csrf": form.cookies["ltk_pre"],
            "next": "//evil.example/x",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_rate_limit_per_user(web_worker: Worker, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, web_worker, requests_per_minute=60)
    with running(cfg, {"olivia": ["ops"]}) as srv:
        c = srv.client("olivia")
        codes = [c.get("/api/hosts").status_code for _ in range(30)]
        assert codes.count(429) > 0 and codes[0] == 200
        rec = srv.audit.query(event="refused", limit=1)[0]
        assert rec.params["status"] == 429 and rec.user == "olivia"


def test_trusted_proxy_header_only_from_the_proxy(web_worker: Worker, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, web_worker, trusted_proxies=["127.0.0.1"], proxy_user_header="X-Forwarded-User"
    )
    with running(cfg, {"olivia": ["ops"]}) as srv:
        c = srv.anon()
        h = {"x-forwarded-user": "olivia", "x-forwarded-for": "203.0.113.9, 198.51.100.7"}
        r = c.get("/api/me", headers=h)
        assert r.status_code == 200 and r.json()["user"] == "olivia"
        assert c.get("/api/hosts", headers=h).status_code == 200
        rec = srv.audit.query(limit=1)[0]
        assert rec.client == "198.51.100.7" and rec.params["auth"] == "proxy"
        assert c.get("/api/me", headers={"x-forwarded-user": "mallory"}).status_code == 401
    cfg = write_config(
        tmp_path, web_worker, trusted_proxies=["10.9.9.9"], proxy_user_header="X-Forwarded-User"
    )
    with running(cfg, {"olivia": ["ops"]}) as srv:
        # We are 127.0.0.1, not the proxy: the header is ignored, X-Forwarded-For too.
        r = srv.anon().get(
            "/api/hosts", headers={"x-forwarded-user": "olivia", "x-forwarded-for": "1.2.3.4"}
        )
        assert r.status_code == 401
        assert srv.audit.query(limit=1)[0].client == "127.0.0.1"


def test_metrics_and_healthz(live: LiveServer) -> None:
    c = live.client("olivia")
    c.get("/api/hosts")
    assert c.get("/healthz").text.startswith("ok")
    text = c.get("/metrics").text
    assert 'logtorukun_http_requests_total{route="/api/hosts",method="GET",status="200"}' in text
    assert "logtorukun_audit_write_failures_total 0" in text
    assert 'logtorukun_http_request_duration_seconds_bucket{route="/api/hosts",le="+Inf"}' in text
    assert "logtorukun_worker_up" in text


def test_openapi_lists_the_contract_paths(live: LiveServer) -> None:
    paths = live.anon().get("/openapi.json").json()["paths"]
    for p in (
        "/api/hosts",
        "/api/hosts/{host}/sources",
        "/api/hosts/{host}/tail",
        "/api/hosts/{host}/grep",
        "/api/hosts/{host}/follow",
        "/api/search",
        "/api/audit",
    ):
        assert p in paths


# ---------------------------------------------------------------------- follow


class SSE:
    """Reads an SSE response in a thread; `events` fills as they come."""

    def __init__(self, client: httpx.Client, url: str, params: dict[str, Any]) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status = 0
        self.ready = threading.Event()
        self._stop = False
        self._resp: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, args=(client, url, params), daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _run(self, client: httpx.Client, url: str, params: dict[str, Any]) -> None:
        with client.stream("GET", url, params=params) as r:
            self._resp = r
            self.status = r.status_code
            if r.status_code != 200:
                r.read()
                self.body = r.json()
                self.ready.set()
                return
            name = "message"
            try:
                for line in r.iter_lines():
                    if self._stop:
                        break
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        self.events.append((name, json.loads(line[5:])))
                        if name == "ready":
                            self.ready.set()
            except httpx.HTTPError:
                pass
        self.ready.set()

    def lines(self) -> list[str]:
        return [ln for name, d in self.events if name == "lines" for ln in d["lines"]]

    @property
    def audit(self) -> int:
        """The seq of this viewer's follow_start record (from the `ready` event)."""
        return int(next(d["audit"] for name, d in self.events if name == "ready"))

    def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.lines()):
            assert time.monotonic() < deadline, f"{text!r} never arrived: {self.events}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop = True
        if self._resp is not None:
            self._resp.close()
        self.thread.join(10)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _wait(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def test_follow_shares_one_upstream_and_audits_each_viewer(
    live: LiveServer, web_worker: Worker
) -> None:
    path = web_worker.root / "follow.log"
    hub = live.server.hub
    a = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": str(path)})
    b = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": str(path)})
    try:
        assert a.status == b.status == 200
        assert len(hub.upstreams) == 1
        assert len(next(iter(hub.upstreams.values())).viewers) == 2
        # Both have had `ready`: every line written from now on reaches both.
        marker = f"appended {time.time()}"
        _append(path, f"2024-12-17 14:00:01 INFO {marker}\n")
        a.wait_for(marker)
        b.wait_for(marker)
    finally:
        a.close()
        b.close()
    ends = [live.end_of(a.audit), live.end_of(b.audit)]
    assert [x.event for x in ends] == ["follow_end", "follow_end"]
    assert not hub.upstreams  # the last viewer leaving stopped the upstream
    assert all(x.outcome and x.outcome["lines"] >= 1 and x.outcome["bytes"] > 0 for x in ends)


def test_follow_cap_per_user_and_grants(live: LiveServer, web_worker: Worker) -> None:
    path = str(web_worker.root / "follow.log")
    cap = live.config.server.max_follows_per_user
    streams = [
        SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": path}) for _ in range(cap)
    ]
    try:
        assert all(s.status == 200 for s in streams)
        extra = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": path})
        assert extra.status == 429 and "at most" in extra.body["reason"]
    finally:
        for s in streams:
            s.close()
    for s in streams:  # the cap is free again once each has written its follow_end
        live.end_of(s.audit)
    denied = SSE(live.client("rita"), "/api/hosts/web1/follow", {"path": str(web_worker.app_log)})
    assert denied.status == 403 and "follow" in denied.body["reason"]
    missing = SSE(
        live.client("olivia"), "/api/hosts/web1/follow", {"path": str(web_worker.root / "gone.log")}
    )
    assert missing.status == 404


def test_follow_upstream_restarts_cleanly_after_the_last_viewer_left(
    live: LiveServer, web_worker: Worker
) -> None:
    path = web_worker.root / "follow.log"
    hub = live.server.hub
    for round_ in range(3):  # leave and come back: each time exactly one fresh upstream
        s = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": str(path)})
        try:
            assert s.status == 200 and len(hub.upstreams) == 1
            _append(path, f"2024-12-17 14:00:02 DEBUG again {round_}\n")
            s.wait_for(f"again {round_}")  # written after `ready`: delivered
        finally:
            s.close()
        live.end_of(s.audit)
        # the slot is released just after the end record is written (on the server's loop)
        _wait(lambda: not hub.upstreams and not hub.per_user.get("olivia"))


# ---------------------------------------------------------------------- continuity


def _pos(path: Path) -> str:
    """The position token just past the end of `path`, computed as the gate does."""
    data = path.read_bytes()
    return f"{path.stat().st_ino}:{len(data)}:{zlib.crc32(data[-64:])}"


def test_a_follow_without_from_delivers_every_line_written_after_ready(
    live: LiveServer, web_worker: Worker
) -> None:
    """`ready` says where the follow starts, and it starts there: a line written the
    moment `ready` arrives is delivered, however late the worker's follow gets going."""
    path = web_worker.root / "after-ready.log"
    path.write_text("2024-12-17 14:00:00 INFO old\n")
    path.chmod(0o644)
    try:
        s = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": str(path)})
        try:
            assert s.status == 200 and s.events[0][1]["pos"] == _pos(path)
            _append(path, "2024-12-17 14:00:01 INFO right after ready\n")
            s.wait_for("right after ready")
            assert s.lines() == ["2024-12-17 14:00:01 INFO right after ready"]
        finally:
            s.close()
        live.end_of(s.audit)
    finally:
        path.unlink()


def test_follow_from_a_tail_position_loses_and_repeats_nothing(
    live: LiveServer, web_worker: Worker
) -> None:
    path = web_worker.root / "cont.log"
    path.write_text("".join(f"2024-12-17 14:00:00 INFO before {i}\n" for i in range(3)))
    path.chmod(0o644)
    hub = live.server.hub
    c = live.client("olivia")
    try:
        loaded = c.get("/api/hosts/web1/tail", params={"path": str(path), "lines": 2}).json()
        st = path.stat()
        assert loaded["pos"] == _pos(path)
        between = [f"2024-12-17 14:00:01 INFO between {i}" for i in range(5)]
        _append(path, "".join(ln + "\n" for ln in between))
        a = SSE(c, "/api/hosts/web1/follow", {"path": str(path), "from": loaded["pos"]})
        assert a.status == 200 and a.events[0][1]["pos"] == loaded["pos"]
        a.wait_for("between 4")
        # a second viewer, loaded later: joins the same upstream from its own position
        second = c.get("/api/hosts/web1/tail", params={"path": str(path), "lines": 1}).json()
        after = [f"2024-12-17 14:00:02 INFO after {i}" for i in range(3)]
        _append(path, "".join(ln + "\n" for ln in after))
        a.wait_for("after 2")
        b = SSE(c, "/api/hosts/web1/follow", {"path": str(path), "from": second["pos"]})
        b.wait_for("after 2")
        assert len(hub.upstreams) == 1 and not hub.private
        assert a.lines() == between + after
        assert b.lines() == after
        assert [d["pos"] for n, d in a.events if n == "lines"][-1] == _pos(path)
        assert st.st_ino == path.stat().st_ino
        # a position the shared upstream does not hold: an upstream of its own
        d = SSE(c, "/api/hosts/web1/follow", {"path": str(path), "from": loaded["pos"]})
        d.wait_for("after 2")
        assert d.lines() == between + after and len(hub.private) == 1
        for s in (a, b, d):
            s.close()
        _wait(lambda: not hub.upstreams and not hub.private)
        starts = live.audit.query(event="follow_start", user="olivia", limit=1)
        assert starts[0].params == {"from": loaded["pos"]}
    finally:
        path.unlink()


def test_follow_from_a_file_rotated_away_shows_a_gap(live: LiveServer, web_worker: Worker) -> None:
    path = web_worker.root / "gone-away.log"
    path.write_text("2024-12-17 14:00:00 INFO old\n")
    path.chmod(0o644)
    c = live.client("olivia")
    try:
        pos = c.get("/api/hosts/web1/tail", params={"path": str(path), "lines": 1}).json()["pos"]
        # replaced (the old one compressed away): its inode is no longer readable
        new = web_worker.root / "gone-away.new"
        new.write_text("2024-12-17 14:00:05 INFO new file\n")
        new.chmod(0o644)
        new.rename(path)
        s = SSE(c, "/api/hosts/web1/follow", {"path": str(path), "from": pos})
        s.wait_for("new file")
        names = [n for n, _ in s.events]
        assert names.index("gap") < names.index("lines")
        gap = next(d for n, d in s.events if n == "gap")
        assert f"inode {pos.split(':')[0]}" in gap["reason"] and "not shown" in gap["reason"]
        s.close()
    finally:
        path.unlink()


def test_follow_from_is_checked(live: LiveServer, web_worker: Worker) -> None:
    c = live.client("olivia")
    for bad in ("12", "a:1:1", "1:2", "1:2:3:4", "-1:0:0", "1:" + "9" * 21 + ":0"):
        r = c.get("/api/hosts/web1/follow", params={"path": str(web_worker.app_log), "from": bad})
        assert r.status_code == 422 and "from" in r.text, (bad, r.text)
    r = c.get("/api/hosts/web1/follow", params={"unit": "worker-service", "from": "1:2:3"})
    assert r.status_code in (403, 422)


def test_follow_beats_while_the_worker_is_heard_and_ends_with_retry(
    live: LiveServer, web_worker: Worker
) -> None:
    path = web_worker.root / "beat.log"
    path.write_text("2024-12-17 14:00:00 INFO x\n")
    path.chmod(0o644)
    c = live.client("olivia")
    try:
        s = SSE(c, "/api/hosts/web1/follow", {"path": str(path)})
        assert s.events[0][1]["heartbeat"] == live.server.hub.heartbeat
        _wait(lambda: sum(n == "beat" for n, _ in s.events) >= 3)
        up = next(iter(live.server.hub.upstreams.values()))
        up.task.cancel()  # the upstream stops (as on a server shutdown)
        _wait(lambda: any(n == "end" for n, _ in s.events))
        end = next(d for n, d in s.events if n == "end")
        assert end == {"reason": "stopped", "retry": True}
        s.close()
    finally:
        path.unlink()
