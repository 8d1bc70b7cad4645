"""The SIEM forwarder against a real rsyslog (and a real HTTPS receiver): every record
arrives in seq order across collector outages and forwarder restarts, duplicates only
where a confirmation was lost, and the request path never waits for the collector."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logtorukun.audit import AuditStore
from logtorukun.audit.errors import AuditError
from logtorukun.audit.forward import Forwarder, ForwardState
from logtorukun.audit.records import GENESIS_HASH, record_hash
from logtorukun.audit.transports import SD_ID, syslog_frame
from logtorukun.config_siem import ForwardConfig
from tests.support.rsyslog import Collector, make_tls_cert

pytestmark = pytest.mark.slow


def forward_cfg(tmp: Path, url: str, **kw: Any) -> ForwardConfig:
    return ForwardConfig(name="siem", url=url, state=tmp / "forward-siem.json", **kw)


def check_delivery(received: list[dict[str, Any]], last: int) -> int:
    """Every seq 1..last arrived, hashes chain, and any repeat is an exact resend of a
    seq already seen (at-least-once). Returns how many duplicates there were."""
    seen: dict[int, dict[str, Any]] = {}
    highest = 0
    dups = 0
    for rec in received:
        seq = rec["seq"]
        if seq in seen:
            assert rec == seen[seq], f"seq {seq} arrived twice with different content"
            dups += 1
            continue
        assert seq == highest + 1, f"gap or reorder: seq {seq} after {highest}"
        body = {k: v for k, v in rec.items() if k not in ("hash", "prev_hash")}
        assert record_hash(rec["prev_hash"], body) == rec["hash"], f"seq {seq}: bad hash"
        if seq > 1:
            assert rec["prev_hash"] == seen[seq - 1]["hash"], f"seq {seq} does not chain"
        else:
            assert rec["prev_hash"] == GENESIS_HASH
        seen[seq] = rec
        highest = seq
    assert highest == last, f"only up to seq {highest} of {last} arrived"
    return dups


def wait_until(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "rsyslog")
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_frame_is_octet_counted_rfc5424(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        store.append("refused", user="mallory", decision="deny", reason="no \u00e9 role")
        rec = store.query(limit=1)[0]
    frame = syslog_frame(rec, "web-1")
    length, _, msg = frame.partition(b" ")
    assert int(length) == len(msg)
    head = msg.decode("utf-8")
    # <authpriv.notice>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG
    assert head.startswith(f"<85>1 {rec.ts.replace('+00:00', 'Z')} web-1 logtorukun - refused ")
    assert f'[{SD_ID} seq="1" hash="{rec.hash}"] ' in head
    assert json.loads(head.split("] ", 1)[1]) == rec.as_dict()


def test_outages_and_restarts_lose_nothing(tmp_path: Path, collector: Collector) -> None:
    """rsyslog stopped mid-stream and a forwarder restart: every record arrives, in order."""
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    cfg = forward_cfg(tmp_path, collector.url, max_backoff=0.2, batch=50)
    fwd = Forwarder(db, cfg)
    store.sinks.append(fwd)
    fwd.start()
    writing = threading.Event()
    written = [0]

    def writer(n: int) -> None:
        for i in range(n):
            store.append("read", user=f"u{i % 7}", host="web1", source="/var/log/app.log")
            written[0] += 1
            if i % 10 == 0:
                time.sleep(0.002)
        writing.clear()

    try:
        writing.set()
        t = threading.Thread(target=writer, args=(600,))
        t.start()
        collector.wait_for_seq(50)
        collector.stop()  # mid-stream: the writer is still appending
        stopped_at = written[0]
        wait_until(lambda: fwd.failing, what="the forwarder to notice the outage")
        t.join(60)
        assert not t.is_alive()
        assert stopped_at < 600, "the outage must begin while records are still written"
        assert fwd.lag() > 0
        assert fwd.position.seq < 600
        collector.start()
        collector.wait_for_seq(600)
        # Now the web server restarts: the forwarder stops, records are written meanwhile.
        fwd.stop()
        store.sinks.remove(fwd)
        for i in range(100):
            store.append("read_end", user="u1", outcome={"bytes": i})
        fwd = Forwarder(db, cfg)
        assert fwd.position.seq >= 600  # picked up from the state file
        store.sinks.append(fwd)
        fwd.start()
        collector.wait_for_seq(700)
        dups = check_delivery(collector.records(), 700)
        assert dups <= 100  # at most a resent batch or two, never the whole trail
        assert ForwardState.load(cfg.state).seq == 700
    finally:
        fwd.stop()
        store.close()


def test_a_batch_the_collector_never_read_is_sent_again(
    tmp_path: Path, collector: Collector
) -> None:
    """The loss window of syslog over TCP: the batch sits unread in the collector's socket
    buffer when it dies. Writing it to the socket was not delivery; it must be resent."""
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    fwd = Forwarder(db, forward_cfg(tmp_path, collector.url, max_backoff=0.2, timeout=60))
    store.sinks.append(fwd)
    try:
        for i in range(20):
            store.append("login", user=f"u{i}")
        fwd.start()
        collector.wait_for_seq(20)
        wait_until(lambda: fwd.position.seq == 20, what="seq 20 confirmed")
        collector.freeze()
        for i in range(30):
            store.append("read", user="olivia", params={"i": i})
        wait_until(lambda: collector.unread_bytes() > 0, what="a batch in rsyslog's buffer")
        assert fwd.position.seq == 20  # sent, not confirmed
        collector.stop(signal.SIGKILL)  # the unread batch is gone with it
        collector.start()
        collector.wait_for_seq(50)
        check_delivery(collector.records(), 50)
        wait_until(lambda: fwd.position.seq == 50, what="seq 50 confirmed")
    finally:
        fwd.stop()
        store.close()


def test_chain_checkpoints_follow_the_records_they_cover(
    tmp_path: Path, collector: Collector
) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore(db, checkpoint_every=10)
    fwd = Forwarder(db, forward_cfg(tmp_path, collector.url, batch=7))
    store.sinks.append(fwd)
    try:
        for i in range(25):
            store.append("login", user=f"u{i}")
        fwd.start()
        collector.wait_for_seq(25)
        deadline = time.monotonic() + 30
        while len(collector.checkpoints()) < 2:
            assert time.monotonic() < deadline, collector.lines()
            time.sleep(0.01)
        heads = {r["seq"]: r["hash"] for r in collector.records()}
        cps = collector.checkpoints()
        assert [c["seq"] for c in cps] == [10, 20]
        assert all(c["hash"] == heads[c["seq"]] for c in cps)
        order = [
            ("cp", r["checkpoint"]["seq"]) if "checkpoint" in r else ("rec", r["seq"])
            for r in collector.lines()
        ]
        for cp in (10, 20):  # each checkpoint comes after the record it names
            assert order.index(("rec", cp)) < order.index(("cp", cp))
    finally:
        fwd.stop()
        store.close()


def test_tls(tmp_path: Path) -> None:
    c = Collector(tmp_path / "rsyslog", tls=True)
    c.start()
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    fwd = Forwarder(db, forward_cfg(tmp_path, c.url, ca_file=c.cert, max_backoff=0.2))
    store.sinks.append(fwd)
    try:
        for i in range(30):
            store.append("login", user=f"user{i}", decision="allow")
        fwd.start()
        c.wait_for_seq(30)
        c.stop()
        for _ in range(20):
            store.append("logout", user="user1")
        wait_until(lambda: fwd.failing, what="the outage to be noticed")
        c.start()
        c.wait_for_seq(50)
        check_delivery(c.records(), 50)
    finally:
        fwd.stop()
        store.close()
        c.stop()


def test_tls_refuses_an_unknown_collector_certificate(tmp_path: Path) -> None:
    c = Collector(tmp_path / "rsyslog", tls=True)
    c.start()
    other_ca, _ = make_tls_cert(tmp_path)  # a CA that did not sign the collector's cert
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    store.append("login", user="a")
    fwd = Forwarder(db, forward_cfg(tmp_path, c.url, ca_file=other_ca))
    try:
        with pytest.raises(Exception, match="certificate verify failed"):
            fwd.run_once()
        assert fwd.position.seq == 0
        assert c.records() == []
    finally:
        fwd.stop()
        store.close()
        c.stop()


def test_a_stuck_collector_never_holds_up_appends(tmp_path: Path) -> None:
    """A collector that accepts and never reads: the forwarder waits, the store does not."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    port = hole.getsockname()[1]
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    fwd = Forwarder(db, forward_cfg(tmp_path, f"syslog+tcp://127.0.0.1:{port}", timeout=30))
    store.sinks.append(fwd)
    try:
        store.append("login", user="a")
        fwd.start()
        conn, _ = hole.accept()  # the forwarder is now inside deliver(), unconfirmed
        for i in range(500):
            store.append("read", user="b", params={"i": i})
        assert store.head() is not None and store.head().seq == 501  # type: ignore[union-attr]
        assert fwd.position.seq == 0
        assert fwd.lag() == 501
        conn.close()
    finally:
        hole.close()
        fwd.stop(timeout=35)
        store.close()


def test_one_process_sends_at_a_time(tmp_path: Path, collector: Collector) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        for i in range(10):
            store.append("login", user=f"u{i}")
    cfg = forward_cfg(tmp_path, collector.url)
    first, second = Forwarder(db, cfg), Forwarder(db, cfg)
    try:
        assert first.run_once() == 10
        assert second.run_once() == 0 and not second.active
        first.stop()
        with AuditStore(db) as store:
            store.append("logout", user="u1")
        assert second.run_once() == 1  # took over, from the position the first one saved
        collector.wait_for_seq(11)
        assert check_delivery(collector.records(), 11) == 0
    finally:
        first.stop()
        second.stop()


def test_a_truncated_store_is_reported(tmp_path: Path, collector: Collector) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        for i in range(5):
            store.append("login", user=f"u{i}")
    cfg = forward_cfg(tmp_path, collector.url)
    fwd = Forwarder(db, cfg)
    try:
        assert fwd.run_once() == 5
        fwd.stop()
        db.unlink()
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        with AuditStore(db) as store:
            store.append("login", user="new")
        fwd = Forwarder(db, cfg)
        with pytest.raises(AuditError, match="records were removed"):
            fwd.run_once()
    finally:
        fwd.stop()


def test_a_corrupt_position_file_is_one_clear_error(tmp_path: Path) -> None:
    cfg = forward_cfg(tmp_path, "syslog+tcp://127.0.0.1:9")
    cfg.state.write_text("{not json")
    with pytest.raises(AuditError, match="delete it to send the whole trail again"):
        Forwarder(tmp_path / "a.db", cfg)


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `fail` POSTs, then stores the JSON lines."""

    lines: list[dict[str, Any]]
    fail: list[int]
    auth: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.auth.append(self.headers.get("authorization", ""))
        if self.fail[0] > 0:
            self.fail[0] -= 1
            self.send_response(503)
            self.end_headers()
            return
        self.lines.extend(json.loads(line) for line in body.decode().splitlines())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_https_json_lines_with_retries(tmp_path: Path) -> None:
    cert, key = make_tls_cert(tmp_path)
    handler: type[_Receiver] = type("H", (_Receiver,), {"lines": [], "fail": [2], "auth": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    url = f"https://127.0.0.1:{srv.server_address[1]}/ingest"
    fwd = Forwarder(
        db, forward_cfg(tmp_path, url, ca_file=cert, token_file=token, max_backoff=0.1, batch=7)
    )
    store.sinks.append(fwd)
    try:
        for i in range(40):
            store.append("read", user="olivia", params={"n": i})
        fwd.start()
        wait_until(lambda: len(handler.lines) >= 40, what="40 records over HTTPS")
        assert check_delivery(handler.lines, 40) == 0
        assert fwd.failures == 2  # the two 503s were retried, not skipped
        assert set(handler.auth) == {"Bearer s3cret"}
    finally:
        fwd.stop()
        store.close()
        srv.shutdown()
