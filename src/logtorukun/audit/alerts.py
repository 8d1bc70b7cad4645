"""Alert rules over the audit trail, evaluated as records are written (no second pass).

The store hands each committed record to `AlertEngine.emit`, which only queues it; the
engine's thread keeps a little state per user (sliding windows of reads, hosts and
refusals; the (user, host, source) pairs already read, in a small SQLite file so a
restart does not fire them again), and when a rule fires it writes an `alert` audit
record (so it reaches the SIEM with everything else and shows on the audit page) and
hands it to the webhook. Times are the records' own timestamps, not the clock.

A rule that fired for a user stays quiet for that user for one `window`, so a bulk
read is one alert, not one per record. Each server process evaluates the records it
wrote itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..config_siem import AlertRule, AlertSettings
from .errors import AuditWriteError
from .queue_worker import QueueWorker
from .records import AuditRecord
from .store import AuditStore
from .webhook import Webhook

log = logging.getLogger("logtorukun.audit.alerts")

READ_EVENTS = frozenset({"read", "follow_start"})
END_EVENTS = frozenset({"read_end", "follow_end"})
QUEUE_LIMIT = 10000
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Alert:
    """One firing: who, which rule, the value that crossed it, the record that did it."""

    rule: AlertRule
    user: str | None
    value: int
    reason: str
    trigger: AuditRecord

    def fields(self) -> dict[str, Any]:
        r = self.rule
        params: dict[str, Any] = {
            "rule": r.name,
            "kind": r.kind,
            "value": self.value,
            "trigger": self.trigger.seq,
        }
        if r.kind in ("bytes", "hosts", "refusals"):
            params.update(over=r.over, window=r.window)
        return {
            "user": self.user,
            "client": self.trigger.client,
            "action": r.kind,
            "host": self.trigger.host,
            "source": self.trigger.source,
            "params": params,
            "reason": self.reason,
        }


@dataclass
class _Window:
    """(time, value, key) entries of one user within a rule's window."""

    entries: deque[tuple[float, int, str]] = field(default_factory=deque)

    def add(self, t: float, value: int, key: str, window: float) -> None:
        self.entries.append((t, value, key))
        while self.entries and self.entries[0][0] <= t - window:
            self.entries.popleft()

    def total(self) -> int:
        return sum(v for _, v, _ in self.entries)

    def distinct(self) -> int:
        return len({k for _, _, k in self.entries})


class SeenReads:
    """The (user, host, source) triples already read, for `first_read`; survives restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen_reads (user TEXT NOT NULL, host TEXT NOT NULL,"
            " source TEXT NOT NULL, first_seq INTEGER, PRIMARY KEY (user, host, source))"
        )

    def first(self, user: str, host: str, source: str, seq: int) -> bool:
        """True (and remembered) if this user never read this source on this host."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO seen_reads VALUES (?, ?, ?, ?)", (user, host, source, seq)
        )
        return cur.rowcount == 1

    def close(self) -> None:
        self._db.close()


def _seconds(record: AuditRecord) -> float:
    return datetime.fromisoformat(record.ts).timestamp()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


class AlertEngine:
    name = "alerts"

    def __init__(
        self, store: AuditStore, settings: AlertSettings, webhook: Webhook | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.rules = settings.rules
        self.webhook = webhook
        if webhook is None and settings.webhook:
            self.webhook = Webhook.from_settings(settings)
        self.fired = 0
        self.dropped = 0
        self.write_failures = 0
        self._windows: dict[tuple[str, str], _Window] = defaultdict(_Window)
        self._quiet_until: dict[tuple[str, str], float] = {}
        self._seen: SeenReads | None = None
        if any(r.kind == "first_read" for r in self.rules) and settings.state is not None:
            self._seen = SeenReads(settings.state)
        self._zones = {r.timezone: ZoneInfo(r.timezone) for r in self.rules}
        self._worker = QueueWorker("alerts", self._handle, QUEUE_LIMIT)

    # -- the sink side: never blocks the writer -------------------------------------

    def emit(self, record: AuditRecord) -> None:
        if record.event == "alert":
            return
        if not self._worker.put(record):
            self.dropped += 1
            if self.dropped == 1:
                log.error("alert queue full (%d): records are not evaluated", QUEUE_LIMIT)

    def close(self) -> None:
        self.stop()

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._worker.stop(timeout)
        if self.webhook is not None:
            self.webhook.stop()
        if self._seen is not None:
            self._seen.close()
            self._seen = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and shutdown: every queued record evaluated (and its alert written)."""
        return self._worker.wait_idle(timeout)

    def _handle(self, record: AuditRecord) -> None:
        try:
            for alert in self.evaluate(record):
                self._fire(alert)
        except Exception:  # one bad record must not end alerting
            log.exception("alert evaluation failed at seq %s", getattr(record, "seq", "?"))

    def _fire(self, alert: Alert) -> None:
        self.fired += 1
        try:
            ref = self.store.append("alert", **alert.fields())
        except AuditWriteError as exc:
            self.write_failures += 1
            log.error("alert %s for %s not recorded: %s", alert.rule.name, alert.user, exc)
            payload = {"event": "alert", "seq": None, **alert.fields()}
        else:
            rec = self.store.query(after_seq=ref.seq - 1, order="asc", limit=1)
            payload = rec[0].as_dict() if rec else {"seq": ref.seq, **alert.fields()}
        if self.webhook is not None:
            self.webhook.send(payload)

    # -- the rules ---------------------------------------------------------------------

    def evaluate(self, record: AuditRecord) -> list[Alert]:
        """The alerts this record raises, updating the rules' state."""
        if record.event == "alert":
            return []
        t = _seconds(record)
        return [a for rule in self.rules for a in self._check(rule, record, t)]

    def _check(self, rule: AlertRule, rec: AuditRecord, t: float) -> Iterator[Alert]:
        kind = rule.kind
        reading = rec.event in READ_EVENTS and rec.decision == "allow" and rec.user
        if kind == "bytes" and rec.event in END_EVENTS and rec.user and rec.outcome:
            nbytes = rec.outcome.get("bytes")
            if isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes > 0:
                w = self._windows[(rule.name, rec.user)]
                w.add(t, nbytes, "", rule.window)
                total = w.total()
                if total > rule.over and self._arm(rule, rec.user, t):
                    yield Alert(
                        rule,
                        rec.user,
                        total,
                        f"{rec.user} read {_size(total)} within {rule.window:g} s "
                        f"(rule {rule.name}: over {_size(rule.over)})",
                        rec,
                    )
        elif kind == "hosts" and reading and rec.host:
            assert rec.user is not None
            w = self._windows[(rule.name, rec.user)]
            w.add(t, 1, rec.host, rule.window)
            n = w.distinct()
            if n > rule.over and self._arm(rule, rec.user, t):
                yield Alert(
                    rule,
                    rec.user,
                    n,
                    f"{rec.user} read from {n} hosts within {rule.window:g} s "
                    f"(rule {rule.name}: over {rule.over})",
                    rec,
                )
        elif kind == "refusals" and rec.decision == "deny":
            who = rec.user or f"anonymous from {rec.client or 'unknown'}"
            w = self._windows[(rule.name, who)]
            w.add(t, 1, "", rule.window)
            n = w.total()
            if n > rule.over and self._arm(rule, who, t):
                yield Alert(
                    rule,
                    rec.user,
                    n,
                    f"{who} was refused {n} times within {rule.window:g} s "
                    f"(rule {rule.name}: over {rule.over}); last: {rec.reason or rec.event}",
                    rec,
                )
        elif kind == "outside_hours" and reading:
            assert rec.user is not None
            local = datetime.fromtimestamp(t, self._zones[rule.timezone])
            minute = local.hour * 60 + local.minute
            inside = local.weekday() in rule.days and rule.start_minute <= minute < rule.end_minute
            if not inside and self._arm(rule, rec.user, t):
                yield Alert(
                    rule,
                    rec.user,
                    minute,
                    f"{rec.user} read at {local:%H:%M} {DAY_NAMES[local.weekday()]} "
                    f"({rule.timezone}), outside the hours of rule {rule.name}",
                    rec,
                )
        elif kind == "first_read" and reading and rec.host and rec.source:
            assert rec.user is not None
            if self._seen is not None and self._seen.first(rec.user, rec.host, rec.source, rec.seq):
                yield Alert(
                    rule,
                    rec.user,
                    1,
                    f"{rec.user} read {rec.source} on {rec.host} for the first time",
                    rec,
                )

    def _arm(self, rule: AlertRule, who: str, t: float) -> bool:
        """Fire at most once per user per window."""
        key = (rule.name, who)
        if t < self._quiet_until.get(key, float("-inf")):
            return False
        self._quiet_until[key] = t + rule.window
        return True

    def status(self) -> dict[str, int]:
        out = {"fired": self.fired, "dropped": self.dropped, "write_failures": self.write_failures}
        if self.webhook is not None:
            out.update(webhook_sent=self.webhook.sent, webhook_failed=self.webhook.failed)
        return out


def gauges(metrics: Any, engine: AlertEngine) -> None:
    """Alert counts in /metrics (web/metrics.py reads them at scrape time)."""

    def read() -> list[tuple[dict[str, str], float]]:
        return [({"what": k}, float(v)) for k, v in sorted(engine.status().items())]

    metrics.gauge(
        "logtorukun_alerts", "Alerts fired, dropped, unrecorded; webhook posts sent, failed.", read
    )


@contextlib.contextmanager
def running(
    store: AuditStore, settings: AlertSettings, webhook: Webhook | None = None
) -> Iterator[AlertEngine]:
    """An engine attached to the store for the duration (tests, one-off tools)."""
    engine = AlertEngine(store, settings, webhook)
    store.sinks.append(engine)
    engine.start()
    try:
        yield engine
    finally:
        store.sinks.remove(engine)
        engine.stop()
