"""The bridge: many requests multiplexed over one `ssh ... bridge` session, framed by protocol.py.

Spoken by hand here, frame by frame, to a real sshd: HELLO, concurrent requests with a
follow among them, cancel, credit (back-pressure), the very refusals and audit records of
a one-shot request, and malformed frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.gate.protocol import (
    CANCEL,
    CREDIT,
    CREDIT_BODY,
    DATA,
    END,
    HEADER,
    HELLO,
    MAX_DATA,
    MAX_FRAME,
    MAX_REQUEST,
    POS,
    REQUEST,
    WINDOW,
    FrameReader,
    pack,
)
from tests.support.sshd import Worker

WAIT = 20.0  # upper bound of every wait below; none is expected to come close


class BridgeClient:
    """A bridge session over a real `ssh` process: send frames, collect frames per id."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.cond = threading.Condition()
        self.frames: list[tuple[int, int, bytes]] = []
        self.eof = False
        self.error: BaseException | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _ftype, rid, payload = self.next_frame(lambda f: f[0] == HELLO)
        assert rid == 0
        self.hello: dict[str, Any] = json.loads(payload)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        parser = FrameReader()
        fd = self.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                got = parser.feed(chunk)
                with self.cond:
                    self.frames.extend(got)
                    self.cond.notify_all()
        except BaseException as exc:  # surfaced by the waits
            self.error = exc
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def send(self, ftype: int, rid: int, payload: bytes = b"") -> None:
        self.send_raw(pack(ftype, rid, payload))

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(
        self, rid: int, command: str, via: dict[str, Any] | None = None, positions: bool = False
    ) -> None:
        body: dict[str, Any] = {"command": command}
        if via is not None:
            body["via"] = via
        if positions:
            body["positions"] = True
        self.send(REQUEST, rid, json.dumps(body).encode())

    def credit(self, rid: int, n: int) -> None:
        self.send(CREDIT, rid, CREDIT_BODY.pack(n))

    def next_frame(self, match: Any, timeout: float = WAIT) -> tuple[int, int, bytes]:
        """Wait for (and remove) the first frame `match` accepts."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, f in enumerate(self.frames):
                    if match(f):
                        return self.frames.pop(i)
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError(f"no such frame (eof={self.eof}, error={self.error})")
                self.cond.wait(left)

    def data(self, rid: int) -> bytes:
        """All DATA already received for `rid` (removed from the buffer)."""
        with self.cond:
            mine = [f for f in self.frames if f[1] == rid and f[0] == DATA]
            self.frames = [f for f in self.frames if not (f[1] == rid and f[0] == DATA)]
        return b"".join(f[2] for f in mine)

    def data_until(self, rid: int, size: int, timeout: float = WAIT) -> bytes:
        got = b""
        while len(got) < size:
            got += self.next_frame(lambda f: f[1] == rid and f[0] == DATA, timeout)[2]
        return got

    def result(self, rid: int, timeout: float = WAIT) -> tuple[bytes, dict[str, Any]]:
        """DATA up to END for `rid`, and the END body."""
        end = self.next_frame(lambda f: f[1] == rid and f[0] == END, timeout)
        with self.cond:  # DATA for rid always precedes its END
            mine = [f for f in self.frames if f[1] == rid and f[0] == DATA]
            self.frames = [f for f in self.frames if not (f[1] == rid and f[0] == DATA)]
        return b"".join(f[2] for f in mine), json.loads(end[2])

    def call(self, rid: int, command: str, **kw: Any) -> tuple[bytes, dict[str, Any]]:
        self.request(rid, command, **kw)
        return self.result(rid)

    def close(self) -> tuple[int, bytes]:
        """Half-close our side (EOF ends the session) and collect exit code and stderr."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            code = self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(WAIT)
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code, err


@pytest.fixture(scope="module")
def bw() -> Iterator[Worker]:
    """A worker of this module alone: its tests append to its log."""
    w = Worker(name="bridge")
    try:
        big = w.root / "big.log"
        row = b"2024-12-17 14:00:00 INFO  [bulk] " + b"x" * 966 + b"\n"  # 1000 bytes
        big.write_bytes(row * 3000)  # 3 MB: three times the initial credit window
        big.chmod(0o644)
        w.start()
        yield w
    finally:
        w.destroy()


@pytest.fixture
def session(bw: Worker) -> Iterator[BridgeClient]:
    client = BridgeClient(bw.ssh_argv("bridge"))
    try:
        yield client
    finally:
        if client.proc.poll() is None:
            client.close()


def app_lines(w: Worker) -> list[bytes]:
    return w.app_log.read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------- the session


def test_hello(session: BridgeClient) -> None:
    h = session.hello
    assert (h["protocol"], h["window"], h["max_data"]) == (1, WINDOW, MAX_DATA)
    assert h["limits"]["max_lines"] == 10_000 and h["limits"]["max_concurrent"] == 8


def test_concurrent_requests_with_a_follow_and_a_cancel(bw: Worker, session: BridgeClient) -> None:
    s = session
    s.request(1, f"tail -F -n 1 {bw.app_log}")
    assert s.data_until(1, 1) == app_lines(bw)[-1]
    s.request(2, f"tail -n 5 {bw.app_log}")
    s.request(3, f"grep -c ERROR {bw.app_log}")
    s.request(4, "sources")
    s.request(5, f"grep 'ERROR' {bw.app_log} | tail -n 3")
    data, end = s.result(2)
    assert (data, end["exit"], end["lines"]) == (b"".join(app_lines(bw)[-5:]), 0, 5)
    data, end = s.result(3)
    assert int(data) == sum(b"ERROR" in ln for ln in app_lines(bw)) and end["exit"] == 0
    data, end = s.result(4)
    assert str(bw.app_log) in {f["path"] for f in json.loads(data)["files"]}
    data, end = s.result(5)
    assert data == b"".join([ln for ln in app_lines(bw) if b"ERROR" in ln][-3:])
    # the follow is still alive and sees an appended line
    line = b"2024-12-17 16:00:01 INFO  [test] appended during a bridge session\n"
    with open(bw.app_log, "ab") as f:
        f.write(line)
    assert s.data_until(1, len(line)) == line
    # a second follow, then cancel the first one: the second goes on
    s.request(6, f"tail -F -n 1 {bw.app_log}")
    assert s.data_until(6, len(line)) == line  # follow 6 runs
    s.send(CANCEL, 1)
    _, end = s.result(1)
    assert end["exit"] == 0 and end["reason"] == "client went away"
    line2 = b"2024-12-17 16:00:02 INFO  [test] after the cancel\n"
    with open(bw.app_log, "ab") as f:
        f.write(line2)
    assert s.data_until(6, len(line2)) == line2
    data, end = s.call(7, f"tail -n 1 {bw.app_log}")
    assert data == line2 and end["exit"] == 0
    assert s.data(1) == b""  # nothing more for the cancelled request
    code, err = s.close()  # EOF cancels follow 6 and ends the session
    assert (code, err) == (0, b"")


def test_credit_is_back_pressure(bw: Worker, session: BridgeClient) -> None:
    s = session
    big = bw.root / "big.log"
    size = big.stat().st_size
    s.request(1, f"cat {big}")
    s.request(2, f"tail -n 3000 {big}")  # an inline read larger than the window, too
    first = s.data_until(1, WINDOW)
    assert len(first) == WINDOW
    assert len(s.data_until(2, WINDOW)) == WINDOW
    # a request without credit does not hold up the others
    data, end = s.call(3, f"tail -n 2 {bw.app_log}")
    assert end["exit"] == 0 and data == b"".join(app_lines(bw)[-2:])
    time.sleep(0.5)  # the gate had time to send more, were it not for the window
    assert s.data(1) == b"" and s.data(2) == b""
    s.credit(1, 1000)
    second = s.data_until(1, 1000)
    assert len(second) == 1000
    time.sleep(0.3)
    assert s.data(1) == b""  # exactly the credit granted, no more
    s.credit(1, size)
    data, end = s.result(1)
    assert first + second + data == big.read_bytes()
    assert end == {"exit": 0, "reason": "", "lines": 3000, "bytes": size, "truncated": False}
    s.credit(2, size)
    data, end = s.result(2)
    assert end["exit"] == 0 and end["lines"] == 3000


def test_same_refusals_and_records_as_one_shot(bw: Worker, session: BridgeClient) -> None:
    s = session
    hostile = [
        f"cat {bw.secret_path}",
        "'; cat /etc/passwd; echo '",
        f"tail -n 1 {bw.app_log}; cat {bw.secret_path}",
        f"tail -n 1 {bw.root}/../../../secret/shadow",
        f"grep -f {bw.secret_path} x {bw.app_log}",
        f"grep -E '(a*)*\\1' {bw.app_log}",
        "journalctl -u 'x + _SYSTEMD_UNIT=sshd.service'",
        f"tail -n 1 {bw.app_log}\ncat {bw.secret_path}",
        f"tail -n 1 {bw.app_log}\x00{bw.secret_path}",  # NUL: a bridge can carry it, ssh cannot
        "bridge",
    ]
    before = len(bw.audit_records())
    for rid, command in enumerate(hostile, 1):
        s.request(rid, command, via={"user": "alice", "request": rid})
    results = [s.result(rid) for rid in range(1, len(hostile) + 1)]
    records = [r for r in bw.audit_since(before) if r.get("event") == "request"]
    records.sort(key=lambda r: r["via"]["request"])  # threaded ones are audited out of order
    for rid, (command, (data, end), rec) in enumerate(
        zip(hostile, results, records, strict=True), 1
    ):
        assert data == b"" and end["exit"] in (Exit.BAD_REQUEST, Exit.REFUSED), end
        assert bw.secret_marker not in end["reason"]
        assert rec["command"] == command and rec["decision"] == "deny"
        assert (rec["mode"], rec["via"]) == ("bridge", {"user": "alice", "request": rid})
        assert rec["reason"] == end["reason"] and rec["exit"] == end["exit"]
        if "\n" not in command and "\x00" not in command and command != "bridge":
            one = bw.ssh(command)  # the same line as a one-shot request
            assert one.returncode == end["exit"]
            assert one.stderr == f"logtorukun-gate: {end['reason']}\n".encode()
    assert "control character 0x00" in results[8][1]["reason"]
    _, err = s.close()
    assert err == b""
    kinds = [r["event"] for r in bw.audit_records()[before - 1 :]]
    assert "session_end" in kinds


def test_allowed_request_records_carry_via_and_end(bw: Worker, session: BridgeClient) -> None:
    before = len(bw.audit_records())
    data, end = session.call(1, f"tail -n 4 {bw.app_log}", via={"user": "bob"})
    start, stop = bw.audit_since(before)
    assert (start["decision"], start["via"], start["key_type"]) == (
        "allow",
        {"user": "bob"},
        "ssh-ed25519",
    )
    assert (stop["id"], stop["event"], stop["lines"], stop["bytes"]) == (
        start["id"],
        "end",
        4,
        len(data),
    )
    st = bw.app_log.stat()
    assert end == {
        "exit": 0,
        "reason": "",
        "lines": 4,
        "bytes": len(data),
        "truncated": False,
        "pos": [st.st_ino, st.st_size, zlib.crc32(bw.app_log.read_bytes()[-64:])],
    }


# ---------------------------------------------------------------- malformed input


def test_malformed_requests_end_that_request_only(bw: Worker, session: BridgeClient) -> None:
    s = session
    bad = [
        (b"not json", "malformed request"),
        (b"[1, 2]", "malformed request"),
        (b'"tail"', "malformed request"),
        (b"{}", "malformed request"),
        (b'{"command": 5}', "malformed request: command must be a string"),
        (b'{"command": "help", "via": "x"}', "malformed request: command must be a string"),
        (b"\xff\xfe{}", "malformed request"),
        (json.dumps({"command": "x" * MAX_REQUEST}).encode(), "is over 16384"),
        (b'{"command": "\\ud800"}', "not valid UTF-8"),
        (b'{"command": "tail -n 1 /x\\udcff"}', "not valid UTF-8"),
    ]
    for rid, (payload, match) in enumerate(bad, 1):
        s.send(REQUEST, rid, payload)
        data, end = s.result(rid)
        assert data == b"" and end["exit"] == Exit.BAD_REQUEST, (payload, end)
        assert match in end["reason"], end
    # CREDIT and CANCEL for ids nobody uses are ignored
    s.credit(999, 5)
    s.send(CANCEL, 998)
    data, end = s.call(100, f"tail -n 1 {bw.app_log}")
    assert end["exit"] == 0 and data == app_lines(bw)[-1]
    assert s.close() == (0, b"")


@pytest.mark.parametrize(
    ("raw", "rid", "reason"),
    [
        (pack(99, 1, b"x"), 1, "malformed type 99 frame"),
        (pack(HELLO, 0, b"{}"), 0, "malformed HELLO frame"),
        (pack(CREDIT, 1, b"\x00\x01"), 1, "malformed CREDIT frame"),  # wrong CREDIT size
        (pack(CANCEL, 1, b"x"), 1, "malformed CANCEL frame"),
        (HEADER.pack(MAX_FRAME + 1, REQUEST, 1) + b"x" * (MAX_FRAME + 1), 1, "is over 1048576"),
    ],
    ids=["unknown-type", "hello", "credit-size", "cancel-payload", "oversize"],
)
def test_broken_framing_is_refused_and_the_session_goes_on(
    bw: Worker, raw: bytes, rid: int, reason: str
) -> None:
    s = BridgeClient(bw.ssh_argv("bridge"))
    s.request(1, f"tail -n 1 {bw.app_log}")
    _data, end = s.result(1)
    assert end["exit"] == 0
    before = len(bw.audit_records())
    s.send_raw(raw)
    data, end = s.result(rid)
    assert data == b"" and end["exit"] == Exit.BAD_REQUEST and reason in end["reason"], end
    # the session goes on
    data, end = s.call(2, f"tail -n 1 {bw.app_log}")
    assert end["exit"] == 0 and data == app_lines(bw)[-1]
    assert s.close() == (0, b"")
    denied = [r for r in bw.audit_records()[before:] if r.get("decision") == "deny"]
    assert len(denied) == 1 and reason in denied[0]["reason"], denied


def test_a_frame_declaring_4_gib_is_refused_without_holding_it(bw: Worker) -> None:
    s = BridgeClient(bw.ssh_argv("bridge"))
    s.send_raw(HEADER.pack(0xFFFFFFFF, REQUEST, 5) + b"x" * 100_000)
    _data, end = s.result(5)
    assert end["exit"] == Exit.BAD_REQUEST and "4294967295 bytes is over" in end["reason"]
    assert s.close() == (0, b"")  # its payload is skipped as it comes, never buffered


def test_a_request_id_still_in_use_ends_the_session(bw: Worker) -> None:
    # An END on the reused id would end the client's running follow as if it had finished;
    # a client that lost track of its ids gets a protocol error instead.
    s = BridgeClient(bw.ssh_argv("bridge"))
    s.request(7, f"tail -F -n 1 {bw.app_log}")
    s.next_frame(lambda f: f[0] == DATA and f[1] == 7)
    s.request(7, f"tail -n 1 {bw.app_log}")
    code, err = s.close()
    assert code == Exit.BAD_REQUEST
    assert err == b"logtorukun-gate: bridge protocol error: request id 7 is already in use\n"
    # No END for 7 at all: not the second request's, and not the follow's, which the
    # session's end cut; the client learns that from the exit and stderr above.
    assert not [f for f in s.frames if f[0] == END and f[1] == 7]


def test_a_truncated_frame_at_eof_ends_quietly(bw: Worker) -> None:
    s = BridgeClient(bw.ssh_argv("bridge"))
    s.send_raw(pack(REQUEST, 1, b'{"command": "help"}')[:-3])
    assert s.close() == (0, b"")
    assert s.frames == []  # no request was served from a partial frame


# ---------------------------------------------------------------- the end of a session


def test_tail_end_and_follow_positions_continue_exactly(bw: Worker, session: BridgeClient) -> None:
    s = session
    log = bw.root / "cont.log"
    log.write_bytes(
        b"".join(b"2024-12-17 14:00:%02d INFO  [c] line %d\n" % (i, i) for i in range(5))
    )
    log.chmod(0o644)
    data, end = s.call(1, f"tail -n 2 {log}")
    st = log.stat()
    tag = zlib.crc32(log.read_bytes()[-64:])
    assert end["pos"] == [st.st_ino, st.st_size, tag] and data.count(b"\n") == 2
    # written between the tail and the follow: must not be lost
    with open(log, "ab") as f:
        f.write(b"between 1\nbetween 2\n")
    s.request(2, f"tail -F -n 0 --from {st.st_ino}:{st.st_size}:{tag} {log}", positions=True)
    assert s.data_until(2, 20) == b"between 1\nbetween 2\n"
    pos = json.loads(s.next_frame(lambda f: f[1] == 2 and f[0] == POS)[2])
    assert pos["ino"] == st.st_ino and pos["off"] in (st.st_size, st.st_size + 20)
    # rename rotation while nobody follows: a new follow from the old position reads the
    # rest of the old file (now cont.log.1), then the new file
    tag2 = zlib.crc32(log.read_bytes()[: st.st_size + 20][-64:])
    with open(log, "ab") as f:
        f.write(b"late in old\n")
    os.rename(log, bw.root / "cont.log.1")
    log.write_bytes(b"first in new\n")
    log.chmod(0o644)
    s.request(3, f"tail -F --from {st.st_ino}:{st.st_size + 20}:{tag2} {log}", positions=True)
    assert s.data_until(3, 25) == b"late in old\nfirst in new\n"
    # a request without `positions` gets no POS frames
    s.request(4, f"tail -F -n 1 {log}")
    assert s.data_until(4, 13) == b"first in new\n"
    s.send(CANCEL, 4)
    s.result(4)
    assert not [f for f in s.frames if f[1] == 4 and f[0] == POS]
    # the old file compressed away: the follow says so and reads the current file
    os.unlink(bw.root / "cont.log.1")
    s.request(5, f"tail -F --from {st.st_ino}:0 {log}", positions=True)
    gap = json.loads(s.next_frame(lambda f: f[1] == 5 and f[0] == POS)[2])
    assert gap["off"] == 0 and f"inode {st.st_ino}" in gap["gap"]
    assert s.data_until(5, 13) == b"first in new\n"
    for rid in (2, 3, 5):
        s.send(CANCEL, rid)
        assert s.result(rid)[1]["exit"] == 0
    log.unlink()


def test_killing_the_client_ends_the_bridge_and_its_follows(bw: Worker) -> None:
    from tests.gate.test_runner import gate_pids, wait_until

    s = BridgeClient(bw.ssh_argv("bridge"))
    s.request(1, f"tail -F -n 1 {bw.app_log}")
    s.request(2, f"tail -F -n 1 {bw.root}/app.log.1")
    s.data_until(1, 1)
    s.data_until(2, 1)
    assert gate_pids(bw)
    s.proc.kill()
    s.proc.wait(WAIT)
    assert wait_until(lambda: not gate_pids(bw)), "the bridge outlived its client"
    s.close()
    records = bw.audit_records()
    assert records[-1]["event"] == "session_end" and records[-1]["requests"] == 2


def test_a_request_cut_by_the_end_of_the_session_gets_no_end(bw: Worker) -> None:
    """The bridge's input ends (the client closed it, or sshd is tearing the session
    down) while a `cat` waits for credit. No END may reach whoever still reads: one
    saying exit 0 made a client take the first MiB of the file for all of it."""
    before = len(bw.audit_records())
    s = BridgeClient(bw.ssh_argv("bridge"))
    big = bw.root / "big.log"
    s.request(1, f"cat {big}")
    assert len(s.data_until(1, WINDOW)) == WINDOW  # held by the credit window
    code, _err = s.close()  # EOF on its input; our side still reads its output
    assert code == 0 and s.eof
    assert not [f for f in s.frames if f[1] == 1 and f[0] == END], s.frames[-3:]
    ends = [r for r in bw.audit_records()[before:] if r.get("event") == "end"]
    assert [r["reason"] for r in ends] == ["client went away"]  # the record says so


def test_a_request_starved_of_credit_still_ends_at_its_time_limit(bw: Worker) -> None:
    """No credit must not mean no limit: the stream gives up (and its slot) at max_seconds."""
    with bw.policy(bw.default_policy(max_seconds=1, follow_max_seconds=1, max_concurrent=2)):
        s = BridgeClient(bw.ssh_argv("bridge"))
        try:
            s.request(1, f"cat {bw.root}/big.log")  # 3 MB: blocks after the first window
            s.request(2, f"tail -F -n 3000 {bw.root}/big.log")
            assert len(s.data_until(1, WINDOW)) == WINDOW
            assert len(s.data_until(2, WINDOW)) == WINDOW
            for rid in (1, 2):
                _, end = s.result(rid, timeout=15)
                assert end["exit"] == Exit.LIMIT and end["truncated"] is True, end
            out = bw.ssh(f"grep -c ERROR {bw.app_log}")  # both slots are free again
            assert out.returncode == 0, out.stderr
        finally:
            s.close()
