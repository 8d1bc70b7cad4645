"""tail / gzip readers, on real files in tmp_path (follow: test_follow.py)."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logtorukun.gate import readers
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.output import LimitReached, Output
from logtorukun.gate.readers import TAIL_CHUNK, tail
from tests.gate.conftest import PreadCounter
from tests.support.fds import opened

BIG = 10**12


def make_out(max_lines: int = BIG, max_bytes: int = BIG) -> tuple[Output, list[bytes]]:
    sink: list[bytes] = []
    return Output(sink.append, max_lines=max_lines, max_bytes=max_bytes), sink


def lines_of(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def expected_tail(data: bytes, n: int, max_lines: int, max_bytes: int) -> tuple[bytes, bool]:
    """The newest lines of the last n that fit both caps, and whether that is short."""
    want = lines_of(data)[-n:] if n > 0 else []
    kept: list[bytes] = []
    size = 0
    for line in reversed(want):
        if len(kept) == max_lines or size + len(line) > max_bytes:
            break
        kept.append(line)
        size += len(line)
    return b"".join(reversed(kept)), len(kept) < len(want)


def run_tail(
    path: Path, n: int, *, gz: bool = False, max_lines: int = BIG, max_bytes: int = BIG
) -> tuple[bytes, LimitReached | None, list[bytes]]:
    out, sink = make_out(max_lines, max_bytes)
    err = None
    with opened(path) as fd:
        try:
            tail(fd, n, out, gz=gz)
        except LimitReached as exc:
            err = exc
    assert (err is not None) == out.truncated
    return b"".join(sink), err, sink


def numbered(a: int, b: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(a, b))


# ---------------------------------------------------------------- tail, plain


@pytest.mark.parametrize("n", [1, 2, 3, 5, 50])
@pytest.mark.parametrize(
    "data",
    [b"", b"\n", b"\n\n\n", b"a\nb\nc\n", b"a\nb\nc", b"only", b"\nx", b"a\n\nb\n\n"],
)
def test_tail_small(tmp_path: Path, data: bytes, n: int) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(data)
    got, err, _ = run_tail(p, n)
    assert err is None
    assert got == b"".join(lines_of(data)[-n:])


def test_tail_zero_lines_and_fd_position_untouched(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    out, sink = make_out()
    with opened(p) as fd:
        tail(fd, 0, out)
        tail(fd, 2, out)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread only: the caller's fd is as given
    assert b"".join(sink) == numbered(8, 10)


def test_tail_no_trailing_newline(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 5) + b"partial")
    got, err, _ = run_tail(p, 2)
    assert got == b"line 000004\npartial" and err is None


def test_tail_huge_lines(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    huge = b"x" * (3 << 20) + b"\n"
    p.write_bytes(numbered(0, 3) + huge + numbered(3, 6))
    got, err, _ = run_tail(p, 4)
    assert got == huge + numbered(3, 6) and err is None
    got, err, _ = run_tail(p, 5)
    assert got == numbered(2, 3) + huge + numbered(3, 6)
    # A byte cap smaller than the huge line: the newest lines that fit, then the cap.
    got, err, _ = run_tail(p, 5, max_bytes=1 << 20)
    assert got == numbered(3, 6)
    assert err is not None and err.code == Exit.LIMIT and "max_bytes" in err.reason


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    p = tmp_path_factory.mktemp("big") / "big.log"
    block = numbered(0, 100_000)  # 1.2 MB
    with p.open("wb") as f:
        for _ in range(42):  # ~50 MB
            f.write(block)
    yield p
    p.unlink()  # do not leave 50 MB in pytest's kept temp dirs


@pytest.mark.parametrize("n", [1, 200, 5000])
def test_tail_reads_proportional_to_n(big_log: Path, pread_bytes: PreadCounter, n: int) -> None:
    p = big_log
    block = numbered(0, 100_000)
    size = p.stat().st_size
    got, err, _ = run_tail(p, n)
    assert err is None
    assert got == block[-12 * n :]
    # Backward scan + forward send: about 2 * 12 * n bytes, plus one block of slack.
    assert pread_bytes.total <= 2 * 12 * n + 2 * (1 << 20)
    assert pread_bytes.total < size / 20


def test_tail_one_huge_line_reads_only_the_byte_cap(
    tmp_path: Path, pread_bytes: PreadCounter
) -> None:
    p = tmp_path / "oneline.log"
    with p.open("wb") as f:
        f.truncate(64 << 20)  # 64 MiB of NULs and no newline: one line
    got, err, _ = run_tail(p, 10, max_bytes=1 << 20)
    assert got == b"" and err is not None and "max_bytes" in err.reason
    assert pread_bytes.total <= (1 << 20) + 2 + readers.TAG_BYTES  # + the position's tag


def test_tail_line_cap_keeps_newest(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 100))
    got, err, _ = run_tail(p, 20, max_lines=5)
    assert got == numbered(95, 100)
    assert err is not None and err.code == Exit.LIMIT and "max_lines" in err.reason
    # Asking for no more than there is, within the cap, is not truncation.
    got, err, _ = run_tail(p, 5, max_lines=5)
    assert got == numbered(95, 100) and err is None


def test_tail_byte_cap_cuts_on_line_boundary(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 100))
    for cap in (12 * 7, 12 * 7 + 5, 12 * 8 - 1):
        got, err, _ = run_tail(p, 50, max_bytes=cap)
        assert got == numbered(93, 100)
        assert err is not None and "max_bytes" in err.reason
    got, err, _ = run_tail(p, 100, max_bytes=1200)
    assert got == numbered(0, 100) and err is None
    got, err, _ = run_tail(p, 100, max_bytes=1199)
    assert got == numbered(1, 100) and err is not None


def test_tail_respects_what_was_already_sent(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 100))
    out, sink = make_out(max_lines=10)
    out.write(b"header\n" * 7)
    with opened(p) as fd, pytest.raises(LimitReached):
        tail(fd, 5, out)
    assert b"".join(sink) == b"header\n" * 7 + numbered(97, 100)
    assert out.lines == 10


def test_tail_large_writes(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 300_000))  # 3.6 MB
    got, err, sink = run_tail(p, 250_000)
    assert got == numbered(50_000, 300_000) and err is None
    assert len(sink) <= len(got) // TAIL_CHUNK + 2  # one write per read, not one per line
    assert all(chunk.endswith(b"\n") for chunk in sink)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n", b"defgh"]), max_size=60).map(
        b"".join
    ),
    n=st.integers(0, 30),
    max_lines=st.integers(0, 40),
    max_bytes=st.integers(0, 200),
    block=st.integers(1, 9),
    chunk=st.sampled_from([1, 3, 7, 64, 1 << 20]),
    gz=st.booleans(),
)
def test_tail_matches_model(
    tmp_path: Path,
    data: bytes,
    n: int,
    max_lines: int,
    max_bytes: int,
    block: int,
    chunk: int,
    gz: bool,
) -> None:
    p = tmp_path / ("app.log.gz" if gz else "app.log")
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers, "FIRST_BLOCK", block)  # many block boundaries
        mp.setattr(readers, "_MAX_BLOCK", block * 2)
        mp.setattr(readers, "CHUNK", chunk)  # many forward writes and gzip pieces
        mp.setattr(readers, "_GZ_INPUT", max(1, chunk // 2))
        got, err, _ = run_tail(p, n, gz=gz, max_lines=max_lines, max_bytes=max_bytes)
    want, short = expected_tail(data, n, max_lines, max_bytes)
    assert got == want
    assert (err is not None) == short


# ---------------------------------------------------------------- tail, gzip


def test_tail_gz(tmp_path: Path) -> None:
    p = tmp_path / "app.log.1.gz"
    p.write_bytes(gzip.compress(numbered(0, 100_000)))
    got, err, _ = run_tail(p, 200, gz=True)
    assert got == numbered(99_800, 100_000) and err is None


def test_tail_gz_multi_member_and_padding(tmp_path: Path) -> None:
    p = tmp_path / "app.log.2.gz"
    # Members split mid-line, an empty member, and NUL padding at the end.
    whole = numbered(0, 1000) + b"last without newline"
    p.write_bytes(
        gzip.compress(whole[:5005])
        + gzip.compress(b"")
        + gzip.compress(whole[5005:9000])
        + gzip.compress(whole[9000:])
        + b"\0" * 100
    )
    got, err, _ = run_tail(p, 3, gz=True)
    assert got == numbered(998, 1000) + b"last without newline" and err is None
    got, _, _ = run_tail(p, 5000, gz=True)
    assert got == whole


def test_tail_gz_bounded_by_byte_cap(tmp_path: Path) -> None:
    p = tmp_path / "app.log.gz"
    huge = b"y" * (5 << 20)
    p.write_bytes(gzip.compress(numbered(0, 10) + huge + b"\n" + numbered(10, 20) + huge))
    # The last line alone is over the cap: nothing fits.
    got, err, _ = run_tail(p, 3, gz=True, max_bytes=1 << 20)
    assert got == b"" and err is not None
    p.write_bytes(gzip.compress(numbered(0, 10) + huge + b"\n" + numbered(10, 20)))
    got, err, _ = run_tail(p, 30, gz=True, max_bytes=1 << 20)
    assert got == numbered(10, 20) and err is not None
    got, err, _ = run_tail(p, 10, gz=True, max_bytes=1 << 20)
    assert got == numbered(10, 20) and err is None


def test_tail_gz_overlong_line_in_small_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "CHUNK", 4)  # the long line arrives in many pieces
    p = tmp_path / "app.log.gz"
    p.write_bytes(gzip.compress(b"x" * 50 + b"\nab\ncd\n"))
    got, err, _ = run_tail(p, 5, gz=True, max_bytes=20)
    assert got == b"ab\ncd\n" and err is not None
    got, err, _ = run_tail(p, 2, gz=True, max_bytes=20)
    assert got == b"ab\ncd\n" and err is None


def test_tail_gz_memory_is_bounded(tmp_path: Path) -> None:
    import tracemalloc

    p = tmp_path / "app.log.gz"
    data = numbered(0, 1_500_000)  # 19 MB of text
    p.write_bytes(gzip.compress(data, compresslevel=1))
    want, _ = expected_tail(data, 1_000_000, BIG, 1 << 20)
    del data
    tracemalloc.start()
    try:
        got, err, _ = run_tail(p, 1_000_000, gz=True, max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == want and err is not None
    assert peak < 8 << 20  # the byte cap plus a few decompressed pieces, not 19 MB


@pytest.mark.parametrize(
    "payload",
    [
        b"not gzip at all\n",
        gzip.compress(numbered(0, 1000), mtime=0)[:-30],  # truncated
        gzip.compress(b"ok\n", mtime=0) + b"\x1f\x8bnot a member",  # a header that is not one
    ],
    ids=["not-gzip", "truncated", "bad-member"],  # the same in every test process (xdist)
)
def test_tail_gz_corrupt(tmp_path: Path, payload: bytes) -> None:
    p = tmp_path / "bad.gz"
    p.write_bytes(payload)
    with pytest.raises(GateError) as ei:
        run_tail(p, 5, gz=True)
    assert ei.value.code == Exit.FAILED


def test_tail_gz_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.gz"
    p.write_bytes(b"")
    assert run_tail(p, 5, gz=True)[:2] == (b"", None)


def test_tail_reports_where_it_ended(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    out, _sink = make_out()
    with opened(p) as fd:
        tail(fd, 3, out)
    tag = zlib.crc32(p.read_bytes()[-64:])
    assert out.position == (p.stat().st_ino, p.stat().st_size, tag)


# ---------------------------------------------------------------- pages of history


@pytest.mark.parametrize("gz", [False, True])
def test_tail_before_pages_back_to_the_start(tmp_path: Path, gz: bool) -> None:
    """Page after page, each ending where the one after it starts: the whole file,
    in order, nothing twice."""
    data = b"".join(b"2024-12-17 14:00:00 INFO line %05d\n" % i for i in range(1000))
    p = tmp_path / ("app.log.2.gz" if gz else "app.log")
    p.write_bytes(gzip.compress(data) if gz else data)
    pages: list[bytes] = []
    off = len(data)
    with opened(p) as fd:
        while off > 0:
            out, sink = make_out()
            readers.tail_before(fd, off, 300, out, gz=gz)
            page = b"".join(sink)
            assert page and data[off - len(page) : off] == page
            pages.append(page)
            off -= len(page)
    assert b"".join(reversed(pages)) == data and len(pages) == 4


def test_tail_before_past_the_end_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"a\nb\n")
    out, _ = make_out()
    with opened(p) as fd, pytest.raises(GateError, match="past the end"):
        readers.tail_before(fd, 99, 5, out)


def test_a_gz_tail_reports_its_decompressed_size(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(100))
    p = tmp_path / "app.log.1.gz"
    p.write_bytes(gzip.compress(data))
    out, sink = make_out()
    with opened(p) as fd:
        tail(fd, 10, out, gz=True)
    assert out.position is not None and out.position[1] == len(data)
    assert b"".join(sink) == data[-len(b"".join(sink)) :]
