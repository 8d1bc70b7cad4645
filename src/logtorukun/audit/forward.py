"""Deliver the audit trail to a SIEM at least once, in seq order, without touching requests.

A `Forwarder` is a thread with its own read-only connection to the store. It follows the
trail by seq (`query(after_seq=position)`), hands batches to a transport (transports.py),
and advances its position (the last delivered seq and hash) only once the collector
confirmed the batch, writing it to a small JSON file with fsync before the next batch.
After a restart, a collector outage or a failed batch it resumes from that position, so
a record is never skipped; a batch that was delivered but whose confirmation was lost is
sent again (the receiver sees those seqs twice: duplicates are detectable by seq, gaps
and rewrites by seq and prev_hash).

Requests never wait for it: the store only calls `emit` (which sets an event) after its
commit, and a slow or dead collector stalls nothing but the forwarder. Records written by
another process sharing the database are picked up by polling every `poll` seconds. Two
server processes with the same state file do not both send: one holds an flock on
`STATE.lock` and forwards, the other waits for the lock.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config_siem import ForwardConfig
from .errors import AuditError
from .records import AuditRecord
from .sinks import Checkpoint
from .store import AuditStore
from .transports import DeliveryError, HttpsTransport, SyslogTransport, Transport, read_token

log = logging.getLogger("logtorukun.audit.forward")

FIRST_BACKOFF = 0.5


@dataclass
class ForwardState:
    """What the state file holds; `seq` 0 means nothing delivered yet."""

    seq: int = 0
    hash: str = ""
    url: str = ""
    delivered_at: float | None = None
    error: str | None = None
    error_at: float | None = None

    @classmethod
    def load(cls, path: Path) -> ForwardState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise AuditError(
                f"{path}: cannot read the forwarder's position ({exc}); restore it, or delete "
                "it to send the whole trail again"
            ) from None
        fields = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        pos = cls(**fields)
        if not isinstance(pos.seq, int) or pos.seq < 0:
            raise AuditError(f"{path}: seq {pos.seq!r} is not a record number")
        return pos

    def save(self, path: Path) -> None:
        """Atomically and durably: a crash leaves the old or the new position, never none."""
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(asdict(self), sort_keys=True).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def transport_for(cfg: ForwardConfig) -> Transport:
    from urllib.parse import urlsplit

    parts = urlsplit(cfg.url)
    if parts.scheme in ("syslog+tcp", "syslog+tls"):
        assert parts.hostname is not None and parts.port is not None
        return SyslogTransport(
            parts.hostname,
            parts.port,
            tls=parts.scheme == "syslog+tls",
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            hostname=cfg.hostname,
            timeout=cfg.timeout,
        )
    token = None
    if cfg.token_file is not None:
        token = read_token(cfg.token_file, f"[[forward]] {cfg.name}")
    return HttpsTransport(
        cfg.url,
        ca_file=cfg.ca_file,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        token=token,
        timeout=cfg.timeout,
    )


class Forwarder:
    """One destination. Also an audit sink: `emit` only wakes the thread."""

    def __init__(
        self, database: Path | str, cfg: ForwardConfig, transport: Transport | None = None
    ) -> None:
        self.database = database if isinstance(database, str) else Path(database)  # or a URL
        self.cfg = cfg
        self.name = f"forward:{cfg.name}"
        self.transport = transport or transport_for(cfg)
        self.position = ForwardState.load(cfg.state)
        self.failures = 0
        self.delivered = 0
        self.failing = False
        self.active = False  # holds the lock: this process is the one sending
        self._head_seen = 0
        # Chain checkpoints the store handed us, sent right after the records they
        # cover. In memory only: each record already carries its seq and hash, so a
        # checkpoint lost with a restart costs the SIEM a marker, not a fact.
        self._checkpoints: collections.deque[Checkpoint] = collections.deque(maxlen=100)
        self._reader: AuditStore | None = None
        self._lock_fd: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the sink side (called by the store after each commit, under its lock) -------

    def emit(self, record: AuditRecord) -> None:
        self._head_seen = record.seq
        self._wake.set()

    def checkpoint(self, cp: Checkpoint) -> None:
        self._checkpoints.append(cp)
        self._wake.set()

    def close(self) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.cfg.timeout + 2 if timeout is None else timeout)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            self.active = False

    # -- the work ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except (AuditError, DeliveryError, OSError) as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug must not end delivery for good
                log.exception("%s: unexpected error", self.name)
                self._failed(f"unexpected error: {exc!r}")
            else:
                backoff = 0.0
                if sent == 0:
                    self._wake.wait(self.cfg.poll)
                    self._wake.clear()
                continue
            backoff = min(self.cfg.max_backoff, max(FIRST_BACKOFF, backoff * 2))
            # Jitter, so several servers do not hammer a recovering collector together.
            self._stop.wait(backoff * random.uniform(0.8, 1.0))

    def run_once(self) -> int:
        """Send the next batch if this process holds the lock; returns how many records."""
        if not self._take_lock():
            return 0
        if self._reader is None:
            self._reader = AuditStore(self.database, readonly=True)
        pos = self.position
        records = self._reader.query(after_seq=pos.seq, order="asc", limit=self.cfg.batch)
        upto = records[-1].seq if records else pos.seq
        points = [c for c in list(self._checkpoints) if c.seq <= upto]
        if not records and points:  # e.g. the stop checkpoint, all records already out
            self.transport.deliver((), points)
            self._drop_checkpoints(points)
            return 0
        if not records:
            head = self._reader.head()
            if head is not None and head.seq < pos.seq:
                raise AuditError(
                    f"the audit store ends at seq {head.seq} but {pos.seq} was already "
                    f"delivered to {self.transport.description}: records were removed (run "
                    f"logtorukun audit verify --expect-head {pos.seq}:{pos.hash})"
                )
            return 0
        first = records[0]
        if pos.hash and first.seq == pos.seq + 1 and first.prev_hash != pos.hash:
            log.error(
                "%s: seq %d does not chain to the delivered seq %d (%s...): the store was "
                "rewritten after delivery; forwarding on, the SIEM will see the break",
                self.name,
                first.seq,
                pos.seq,
                pos.hash[:12],
            )
        self.transport.deliver(records, points)
        self._drop_checkpoints(points)
        last = records[-1]
        was_failing = self.failing
        self.position = ForwardState(
            seq=last.seq, hash=last.hash, url=self.transport.description, delivered_at=time.time()
        )
        self.position.save(self.cfg.state)
        self.delivered += len(records)
        self.failing = False
        if was_failing:
            log.warning("%s: delivering again from seq %d", self.name, first.seq)
        return len(records)

    def _drop_checkpoints(self, sent: list[Checkpoint]) -> None:
        for cp in sent:
            with contextlib.suppress(ValueError):
                self._checkpoints.remove(cp)

    def _take_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        lock_path = self.cfg.state.with_name(self.cfg.state.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self.active = True
        # The other process may have moved the position while it held the lock.
        self.position = ForwardState.load(self.cfg.state)
        return True

    def _failed(self, why: str) -> None:
        self.failures += 1
        first = not self.failing
        self.failing = True
        if first:
            log.warning(
                "%s: %s (retrying with backoff from seq %d; lag in /metrics)",
                self.name,
                why,
                self.position.seq + 1,
            )
            self.position.error, self.position.error_at = why, time.time()
            with contextlib.suppress(OSError):
                self.position.save(self.cfg.state)

    # -- observing ---------------------------------------------------------------------

    def lag(self, head_seq: int | None = None) -> int:
        """Records written but not yet confirmed by the collector."""
        head = max(self._head_seen, head_seq or 0)
        return max(0, head - self.position.seq)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "url": self.transport.description,
            "delivered_seq": self.position.seq,
            "lag": self.lag(),
            "failing": self.failing,
            "failures": self.failures,
            "active": self.active,
        }


STALL_SECONDS = 300.0


def doctor_report(head_seq: int, cfg: ForwardConfig, now: float) -> tuple[bool, str, str]:
    """(ok, detail, fix) for `logtorukun doctor`: records waiting longer than 5 minutes fail."""
    try:
        pos = ForwardState.load(cfg.state)
    except AuditError as exc:
        return False, str(exc), f"restore {cfg.state} or delete it (the trail is then resent)"
    lag = max(0, head_seq - pos.seq)
    since = (
        "never delivered"
        if pos.delivered_at is None
        else f"last delivery {now - pos.delivered_at:.0f} s ago"
    )
    detail = f"{cfg.url}: delivered up to seq {pos.seq} of {head_seq}, lag {lag}; {since}"
    if head_seq < pos.seq:
        return (
            False,
            detail + "; the store is SHORTER than what the SIEM received",
            f"records were removed: logtorukun audit verify --expect-head {pos.seq}:{pos.hash}",
        )
    stalled = lag > 0 and (pos.delivered_at is None or now - pos.delivered_at > STALL_SECONDS)
    if pos.error and (stalled or (pos.error_at or 0) > (pos.delivered_at or 0)):
        detail += f"; last error: {pos.error}"
    fix = (
        f"check that the collector at {cfg.url} is up and reachable and that the web server"
        " is running (it forwards); the lag is in /metrics as logtorukun_audit_forward_lag_records"
    )
    return not stalled, detail, "" if not stalled else fix


def gauges(metrics: Any, forwarders: list[Forwarder], store: AuditStore) -> None:
    """Lag per forwarder in /metrics (web/metrics.py reads these at scrape time)."""

    def lag() -> list[tuple[dict[str, str], float]]:
        head = store.head()
        seq = head.seq if head else 0
        return [({"forward": f.cfg.name}, float(f.lag(seq))) for f in forwarders]

    metrics.gauge(
        "logtorukun_audit_forward_lag_records",
        "Audit records not yet confirmed by the SIEM collector.",
        lag,
    )
    metrics.gauge(
        "logtorukun_audit_forward_delivered_seq",
        "The last audit seq the SIEM collector confirmed.",
        lambda: [({"forward": f.cfg.name}, float(f.position.seq)) for f in forwarders],
    )
    metrics.gauge(
        "logtorukun_audit_forward_failing",
        "1 while deliveries to the SIEM collector fail (retrying with backoff).",
        lambda: [({"forward": f.cfg.name}, 1.0 if f.failing else 0.0) for f in forwarders],
    )
    metrics.gauge(
        "logtorukun_audit_forward_failures",
        "Failed delivery attempts since the server started.",
        lambda: [({"forward": f.cfg.name}, float(f.failures)) for f in forwarders],
    )


def forwarders_from_config(
    database: Path | str, forwards: tuple[ForwardConfig, ...]
) -> list[Forwarder]:
    return [Forwarder(database, cfg) for cfg in forwards]
