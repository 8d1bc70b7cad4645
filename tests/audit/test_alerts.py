"""Alert rules, evaluated as records are written, against a real store and a local
webhook receiver: each rule fires once when crossed (and not before), writes an `alert`
record, and the webhook gets it, retried through failures."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from logtorukun.audit import AuditStore
from logtorukun.audit.alerts import AlertEngine, running
from logtorukun.audit.records import AuditRecord
from logtorukun.audit.webhook import Webhook
from logtorukun.config_siem import AlertRule, AlertSettings

T0 = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[AuditStore]:
    with AuditStore(tmp_path / "audit.db", clock=clock) as s:
        yield s


def settings(tmp_path: Path, *rules: AlertRule, webhook: str | None = None) -> AlertSettings:
    return AlertSettings(rules=rules, webhook=webhook, state=tmp_path / "alerts.db")


def alerts(store: AuditStore) -> list[AuditRecord]:
    return list(reversed(store.query(event="alert")))


def read(store: AuditStore, user: str, host: str = "web1", source: str = "/var/log/a.log") -> None:
    ref = store.append("read", user=user, host=host, source=source, decision="allow")
    store.finish(ref, "read_end", {"bytes": 10})


def test_bytes_in_a_window(tmp_path: Path, store: AuditStore, clock: Clock) -> None:
    rule = AlertRule("bulk", "bytes", over=1000, window=60)
    with running(store, settings(tmp_path, rule)) as engine:
        for _ in range(4):  # 4 x 300 = 1200 > 1000 on the fourth
            ref = store.append("read", user="olivia", host="web1", source="/a", decision="allow")
            store.finish(ref, "read_end", {"bytes": 300})
            clock.advance(1)
        store.finish(ref, "read_end", {"bytes": 300})  # still in the window: no second alert
        ref2 = store.append("read", user="rita", host="web1", source="/a", decision="allow")
        store.finish(ref2, "read_end", {"bytes": 999})  # another user, under the limit
        assert engine.wait_idle()
        (alert,) = alerts(store)
        assert alert.user == "olivia" and alert.action == "bytes"
        assert alert.params["rule"] == "bulk" and alert.params["value"] == 1200
        assert alert.params["trigger"] == 8  # the fourth read_end
        assert "olivia read 1.2 KiB within 60 s" in (alert.reason or "")
        clock.advance(120)  # the window passed: the old reads no longer count
        ref = store.append("read", user="olivia", host="web1", source="/a", decision="allow")
        store.finish(ref, "read_end", {"bytes": 300})
        assert engine.wait_idle()
        assert len(alerts(store)) == 1
        store.finish(ref, "read_end", {"bytes": 800})
        assert engine.wait_idle()
        assert len(alerts(store)) == 2


def test_hosts_in_a_window(tmp_path: Path, store: AuditStore, clock: Clock) -> None:
    rule = AlertRule("sweep", "hosts", over=2, window=600)
    with running(store, settings(tmp_path, rule)) as engine:
        for host in ("web1", "web1", "web2", "web2"):
            read(store, "dan", host)
        store.append("read", user="dan", host="db9", source="/x", decision="deny")  # refused
        assert engine.wait_idle()
        assert alerts(store) == []
        read(store, "dan", "db1")
        assert engine.wait_idle()
        (alert,) = alerts(store)
        assert alert.user == "dan" and alert.params["value"] == 3 and alert.host == "db1"


def test_refusals_in_a_window(tmp_path: Path, store: AuditStore, clock: Clock) -> None:
    rule = AlertRule("probing", "refusals", over=2, window=300)
    with running(store, settings(tmp_path, rule)) as engine:
        for _ in range(2):
            store.append("refused", user="mallory", decision="deny", reason="no role")
            store.append("login_failed", client="203.0.113.9", decision="deny", reason="bad")
        assert engine.wait_idle()
        assert alerts(store) == []
        store.append("refused", user="mallory", decision="deny", reason="no role for db1")
        store.append("login_failed", client="203.0.113.9", decision="deny", reason="bad")
        assert engine.wait_idle()
        first, second = alerts(store)
        assert first.user == "mallory" and "refused 3 times" in (first.reason or "")
        assert "no role for db1" in (first.reason or "")
        assert second.user is None and second.client == "203.0.113.9"
        assert "anonymous from 203.0.113.9 was refused 3 times" in (second.reason or "")


def test_outside_hours(tmp_path: Path, store: AuditStore, clock: Clock) -> None:
    rule = AlertRule(
        "night",
        "outside_hours",
        start_minute=7 * 60,
        end_minute=19 * 60,
        days=frozenset(range(5)),
        timezone="Europe/Berlin",
        window=3600,
    )
    with running(store, settings(tmp_path, rule)) as engine:
        read(store, "olivia")  # Monday 11:00 in Berlin
        clock.now = datetime(2025, 3, 3, 18, 30, tzinfo=UTC)  # 19:30 in Berlin
        read(store, "olivia")
        read(store, "olivia")  # same hour: once
        clock.now = datetime(2025, 3, 8, 10, 0, tzinfo=UTC)  # Saturday
        read(store, "rita")
        assert engine.wait_idle()
        first, second = alerts(store)
        assert first.user == "olivia" and "19:30 Monday (Europe/Berlin)" in (first.reason or "")
        assert second.user == "rita" and "Saturday" in (second.reason or "")


def test_first_read_survives_a_restart(tmp_path: Path, store: AuditStore) -> None:
    rule = AlertRule("new-source", "first_read")
    cfg = settings(tmp_path, rule)
    with running(store, cfg) as engine:
        read(store, "olivia", "web1", "/var/log/a.log")
        read(store, "olivia", "web1", "/var/log/a.log")
        read(store, "olivia", "web2", "/var/log/a.log")
        read(store, "rita", "web1", "/var/log/a.log")
        store.append("read", user="rita", host="web1", action="sources", decision="allow")
        assert engine.wait_idle()
        assert [(a.user, a.host) for a in alerts(store)] == [
            ("olivia", "web1"),
            ("olivia", "web2"),
            ("rita", "web1"),
        ]
    with running(store, cfg) as engine:  # the server restarted
        read(store, "olivia", "web1", "/var/log/a.log")
        read(store, "olivia", "web1", "/var/log/b.log")
        assert engine.wait_idle()
        assert [a.source for a in alerts(store)][-1] == "/var/log/b.log"
        assert len(alerts(store)) == 4


def test_alerts_do_not_feed_themselves(tmp_path: Path, store: AuditStore) -> None:
    rule = AlertRule("any-refusal", "refusals", over=0, window=1)
    with running(store, settings(tmp_path, rule)) as engine:
        store.append("refused", user="x", decision="deny")
        assert engine.wait_idle()
        assert len(alerts(store)) == 1
        assert engine.evaluate(alerts(store)[0]) == []


class Receiver(http.server.BaseHTTPRequestHandler):
    got: list[dict[str, Any]]
    fail: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.fail[0] > 0:
            self.fail[0] -= 1
            self.send_response(500)
            self.end_headers()
            return
        assert self.headers["content-type"] == "application/json"
        self.got.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("R", (Receiver,), {"got": [], "fail": [2]})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_webhook_gets_the_alert_record_after_retries(
    tmp_path: Path, store: AuditStore, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    hook = Webhook(url, attempts=3, first_backoff=0.01)
    rule = AlertRule("any-refusal", "refusals", over=0, window=60)
    with running(store, settings(tmp_path, rule, webhook=url), hook) as engine:
        store.append("refused", user="mallory", decision="deny", reason="nope")
        assert engine.wait_idle() and hook.wait_idle()
    (alert,) = alerts(store)
    (got,) = handler.got
    assert got["seq"] == alert.seq and got["hash"] == alert.hash  # the recorded alert itself
    assert got["event"] == "alert" and got["params"]["rule"] == "any-refusal"
    assert got["text"].startswith("logtorukun alert: mallory was refused 1 times")
    assert hook.sent == 1 and hook.failed == 0


def test_webhook_gives_up_after_its_attempts(
    tmp_path: Path, store: AuditStore, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    handler.fail[0] = 100
    hook = Webhook(url, attempts=3, first_backoff=0.01)
    rule = AlertRule("any-refusal", "refusals", over=0, window=60)
    with running(store, settings(tmp_path, rule, webhook=url), hook) as engine:
        store.append("refused", user="mallory", decision="deny")
        assert engine.wait_idle() and hook.wait_idle()
    assert handler.fail[0] == 97  # exactly three attempts
    assert hook.failed == 1 and handler.got == []
    assert len(alerts(store)) == 1  # the audit trail has it regardless


def test_a_flood_never_blocks_the_writer(tmp_path: Path, store: AuditStore) -> None:
    """The engine's queue is bounded: past it, records are counted as not evaluated and
    appends go on at once."""
    engine = AlertEngine(store, settings(tmp_path, AlertRule("r", "refusals", over=5)))
    store.sinks.append(engine)  # not started: nothing drains the queue
    try:
        for _ in range(10_050):
            store.append("refused", user="x", decision="deny")
        assert engine.dropped == 50
        assert store.head() is not None and store.head().seq == 10_050  # type: ignore[union-attr]
    finally:
        store.sinks.remove(engine)
        engine.stop()
