"""`cat` through the bridge where no cap can bind: the file's bytes go to the frames by
splice (never through Python), still within each request's credit, byte-exact, and
exact when the file grows or shrinks while the stream waits for credit.

The pauses are the credit window's: after WINDOW bytes the gate cannot send more until
the test grants it, so the file is changed at a known point of the stream.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.gate.bridge import _Writer
from logtorukun.gate.errors import Exit
from logtorukun.gate.protocol import DATA, MAX_DATA, WINDOW, FrameReader
from tests.gate.test_bridge import WAIT, BridgeClient
from tests.support.sshd import Worker

SIZE = 3_000_000  # 3,000 lines of 1,000 bytes: three credit windows


@pytest.fixture(scope="module")
def cw() -> Iterator[Worker]:
    w = Worker(name="bridge-cat")
    try:
        w.write_policy(w.default_policy(max_lines=SIZE, max_bytes=10**10))
        w.start()
        yield w
    finally:
        w.destroy()


@pytest.fixture
def log(cw: Worker) -> bytes:
    """A fresh 3 MB log at cw.root/big.log, whole lines; returns its bytes."""
    body = b"".join(b"%04d " % i + b"x" * 994 + b"\n" for i in range(3000))
    path = cw.root / "big.log"
    path.write_bytes(body)
    path.chmod(0o644)
    return body


@pytest.fixture
def session(cw: Worker) -> Iterator[BridgeClient]:
    client = BridgeClient(cw.ssh_argv("bridge"))
    try:
        yield client
    finally:
        if client.proc.poll() is None:
            client.close()


def end_record(w: Worker) -> dict[str, object]:
    return [r for r in w.audit_records() if r["event"] == "end"][-1]


def test_cat_is_byte_exact_and_keeps_to_the_credit(
    cw: Worker, log: bytes, session: BridgeClient
) -> None:
    s = session
    s.request(1, f"cat {cw.root}/big.log")
    first = s.data_until(1, WINDOW)
    assert first == log[:WINDOW]
    s.credit(1, 1000)
    assert s.data_until(1, 1000) == log[WINDOW : WINDOW + 1000]
    s.credit(1, SIZE)
    data, end = s.result(1)
    assert first + log[WINDOW : WINDOW + 1000] + data == log
    assert (end["exit"], end["bytes"], end["truncated"]) == (0, SIZE, False)
    # No line was counted (max_lines = the size: the cap could not bind on any byte).
    rec = end_record(cw)
    assert rec["lines"] == 0 and rec["lines_counted"] is False and rec["bytes"] == SIZE


def test_a_file_cut_while_the_stream_waits_for_credit_ends_cleanly(
    cw: Worker, log: bytes, session: BridgeClient
) -> None:
    s = session
    s.request(1, f"cat {cw.root}/big.log")
    assert s.data_until(1, WINDOW) == log[:WINDOW]  # the gate now waits for credit
    with open(cw.root / "big.log", "r+b") as f:
        f.truncate(WINDOW + 5000)
    s.credit(1, SIZE)
    data, end = s.result(1)
    assert data == log[WINDOW : WINDOW + 5000]
    assert (end["exit"], end["bytes"]) == (0, WINDOW + 5000)


def test_growth_past_max_lines_is_cut_at_exactly_max_lines(
    cw: Worker, log: bytes, session: BridgeClient
) -> None:
    """The 3 MB went uncounted; 3 million short lines appended meanwhile take the total
    past max_lines (3,000,000): the stream stops at exactly that many lines."""
    s = session
    s.request(1, f"cat {cw.root}/big.log")
    first = s.data_until(1, WINDOW)
    with open(cw.root / "big.log", "ab") as f:
        f.write(b"n\n" * 3_000_000)
    s.credit(1, 10 * SIZE)
    data, end = s.result(1)
    got = first + data
    assert got.count(b"\n") == SIZE
    assert got == log + b"n\n" * (SIZE - 3000)
    assert end["exit"] == Exit.LIMIT and "max_lines" in end["reason"]
    assert end["lines"] == SIZE


def test_a_spliced_frame_holds_exactly_the_bytes_the_file_had(tmp_path: Path) -> None:
    """The frame header is written only once the splice said how many bytes there are:
    a frame is whole and exact at any offset, short at the end of the file, absent past it."""
    body = b"".join(b"line %06d\n" % i for i in range(20_000))  # 240 KB
    path = tmp_path / "app.log"
    path.write_bytes(body)
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 16), b"")))
    reader.start()
    writer = _Writer(w)
    fd = os.open(path, os.O_RDONLY)
    try:
        sizes = [
            writer.splice_data(7, fd, 10, MAX_DATA),  # not page-aligned
            writer.splice_data(7, fd, len(body) - 3, MAX_DATA),  # the last 3 bytes
            writer.splice_data(7, fd, len(body), MAX_DATA),  # nothing left
        ]
    finally:
        os.close(fd)
        writer.close()
        os.close(w)
        reader.join(WAIT)
        os.close(r)
    assert 0 < sizes[0] <= MAX_DATA and sizes[1:] == [3, 0]
    frames = FrameReader().feed(b"".join(got))
    assert frames == [
        (DATA, 7, body[10 : 10 + sizes[0]]),
        (DATA, 7, body[-3:]),
    ]
