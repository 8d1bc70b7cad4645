"""`cat` of a plain file without counting lines: where the line cap can and cannot bind,
files that grow or shrink while they are sent, sinks with and without sendfile.

Every test drives `readers.copy_lines` (what `cat` runs) on a real file into a real sink:
a file opened for writing, filled by `os.sendfile` like a one-shot's stdout, or by plain
writes like a bridge's frames. Growth and truncation happen at a fixed point (inside the
sink, after a piece was sent), so nothing depends on timing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logtorukun.gate import readers
from logtorukun.gate.output import FILE_PIECE, PIPE_SIZE, LimitReached, Output, widen_pipe
from tests.support.fds import opened

BIG = 10**12
LINE = 100  # bytes per line of `lines_file`


def lines_file(path: Path, count: int, start: int = 0) -> bytes:
    """`count` numbered lines of exactly LINE bytes each."""
    body = b"".join(b"%09d " % i + b"x" * (LINE - 11) + b"\n" for i in range(start, start + count))
    path.write_bytes(body)
    return body


class Sink:
    """A real file as the output; with `sendfile`, bytes of the log go to it by
    `os.sendfile`, the way a one-shot's stdout gets them. `after_piece` runs after
    each piece the sink took (sent by sendfile or written)."""

    def __init__(self, path: Path, *, sendfile: bool, refuse: bool = False) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.path = path
        self.sendfile_calls = 0
        self.writes = 0
        self.refuse = refuse
        self.has_sendfile = sendfile
        self.after_piece: Callable[[], None] = lambda: None

    def write(self, data: bytes) -> None:
        self.writes += 1
        os.write(self.fd, data)
        self.after_piece()

    def send(self, fd: int, offset: int, count: int) -> int:
        self.sendfile_calls += 1
        if self.refuse:
            return -1  # like a stdout that cannot take sendfile (EINVAL)
        sent = 0
        while sent < count:
            n = os.sendfile(self.fd, fd, offset + sent, count - sent)
            if n == 0:
                break
            sent += n
        self.after_piece()
        return sent

    def output(self, max_lines: int, max_bytes: int = BIG) -> Output:
        return Output(
            self.write,
            max_lines=max_lines,
            max_bytes=max_bytes,
            sendfile=self.send if self.has_sendfile else None,
        )

    def data(self) -> bytes:
        return self.path.read_bytes()


@pytest.fixture(params=["sendfile", "writes"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path / "out", sendfile=request.param == "sendfile")
    try:
        yield s
    finally:
        os.close(s.fd)


def cat(path: Path, out: Output) -> LimitReached | None:
    with opened(path) as fd:
        try:
            readers.copy_lines(fd, out, None, gz=False)
        except LimitReached as exc:
            return exc
    return None


def first_lines(data: bytes, k: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:k])


# ------------------------------------------------- where the line cap can bind


def test_no_counting_when_the_line_cap_cannot_bind(tmp_path: Path, sink: Sink) -> None:
    log = tmp_path / "app.log"
    body = lines_file(log, 30_000)  # 3 MB
    out = sink.output(max_lines=len(body))  # at least one byte per line: it cannot bind
    assert cat(log, out) is None
    assert sink.data() == body
    assert out.lines == 0 and out.uncounted == len(body) and out.bytes == len(body)
    assert out.notes["lines_counted"] is False
    if sink.has_sendfile:
        assert sink.writes == 0 and sink.sendfile_calls == -(-len(body) // FILE_PIECE)
    else:  # read and written in pieces, not line by line
        assert sink.writes == -(-len(body) // FILE_PIECE)


def test_only_a_prefix_is_counted_when_the_cap_is_just_below_the_size(
    tmp_path: Path, sink: Sink
) -> None:
    """With max_lines = size - 1.5 MiB, the first lines are counted until 1.5 MiB of
    non-newline bytes are behind: after that no cap can bind on the rest."""
    log = tmp_path / "app.log"
    body = lines_file(log, 40_000)  # 4 MB, 40,000 lines
    slack = 3 * FILE_PIECE // 2
    out = sink.output(max_lines=len(body) - slack)
    assert cat(log, out) is None
    assert sink.data() == body
    # Whole pieces of whole lines were counted until the slack was covered.
    counted = out.lines
    assert 0 < counted < 40_000
    assert counted * (LINE - 1) >= slack > (counted - readers.CHUNK // LINE) * (LINE - 1)
    assert out.uncounted == len(body) - counted * LINE
    assert out.notes["lines_counted"] is False


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_line_cap_binds_exactly_at_its_boundary(tmp_path: Path, sink: Sink, extra: int) -> None:
    log = tmp_path / "app.log"
    body = lines_file(log, 25_000)
    out = sink.output(max_lines=25_000 + extra)
    err = cat(log, out)
    if extra < 0:
        assert err is not None and "max_lines" in err.reason
        assert sink.data() == first_lines(body, 24_999)
        assert out.lines == 24_999
    else:
        assert err is None and sink.data() == body
        assert out.lines == 25_000 and "lines_counted" not in out.notes


def test_a_file_of_empty_lines_is_counted_to_the_end(tmp_path: Path, sink: Sink) -> None:
    """One byte per line: the line cap can bind on every byte, so all are counted."""
    log = tmp_path / "empty-lines.log"
    log.write_bytes(b"\n" * (3 * FILE_PIECE))
    out = sink.output(max_lines=3 * FILE_PIECE - 7)
    err = cat(log, out)
    assert err is not None and "max_lines" in err.reason
    assert sink.data() == b"\n" * (3 * FILE_PIECE - 7)
    assert out.uncounted == 0


def test_the_byte_cap_still_binds_on_a_line_boundary(tmp_path: Path, sink: Sink) -> None:
    log = tmp_path / "app.log"
    body = lines_file(log, 30_000)
    out = sink.output(max_lines=BIG, max_bytes=len(body) - 150)
    err = cat(log, out)
    assert err is not None and "max_bytes" in err.reason
    assert sink.data() == body[: len(body) - 2 * LINE]


# ------------------------------------------------- files that change while sent


def test_growth_after_an_uncounted_span_is_capped_exactly(tmp_path: Path, sink: Sink) -> None:
    """The file's 2 MB at the start went uncounted (max_lines = its size: the cap cannot
    bind on them); 2 million short lines appended meanwhile push the total past
    max_lines: the uncounted span is counted after all, and the output stops exactly
    at max_lines (not one line more, not one fewer)."""
    log = tmp_path / "app.log"
    body = lines_file(log, 20_000)
    grown = [False]

    def append() -> None:
        if not grown[0]:
            grown[0] = True
            with open(log, "ab") as f:
                f.write(b"n\n" * 2_000_000)

    sink.after_piece = append
    out = sink.output(max_lines=len(body))  # the 2 MB cannot reach it: sent uncounted
    err = cat(log, out)
    assert err is not None and "max_lines" in err.reason
    assert sink.data() == first_lines(log.read_bytes(), len(body))
    assert out.lines == len(body) and out.uncounted == 0


def test_growth_that_fits_is_sent_whole(tmp_path: Path, sink: Sink) -> None:
    log = tmp_path / "app.log"
    lines_file(log, 20_000)
    appended = [False]

    def append() -> None:
        if not appended[0]:
            appended[0] = True
            with open(log, "ab") as f:
                f.write(b"late line\n" * 1_000 + b"no newline at the end")

    sink.after_piece = append
    out = sink.output(max_lines=BIG)
    assert cat(log, out) is None
    assert sink.data() == log.read_bytes()


def test_a_truncated_and_regrown_file_never_passes_the_line_cap(tmp_path: Path, sink: Sink) -> None:
    """copytruncate while the uncounted span is sent, then many short lines: what was
    sent can no longer be counted, so it counts one line per byte. The cap may stop
    early but is never passed."""
    log = tmp_path / "app.log"
    body = lines_file(log, 3 * FILE_PIECE // LINE)
    done = [False]

    def rotate() -> None:
        if not done[0]:
            done[0] = True
            with open(log, "r+b") as f:
                f.truncate(0)
                f.write(b"n\n" * (2 * len(body)))  # regrown past where the cat stands

    sink.after_piece = rotate
    max_lines = len(body) + 10_000
    out = sink.output(max_lines=max_lines)
    err = cat(log, out)
    assert err is not None and "max_lines" in err.reason
    sent = sink.data()
    assert sent.count(b"\n") <= max_lines
    assert out.lines + out.uncounted <= max_lines


def test_a_file_that_shrinks_under_the_send_ends_without_error(tmp_path: Path, sink: Sink) -> None:
    log = tmp_path / "app.log"
    body = lines_file(log, 30_000)
    done = [False]

    def shrink() -> None:
        if not done[0]:
            done[0] = True
            os.truncate(log, FILE_PIECE + 50)

    sink.after_piece = shrink
    out = sink.output(max_lines=BIG)
    assert cat(log, out) is None
    sent = sink.data()
    assert sent == body[: len(sent)] and FILE_PIECE <= len(sent) <= FILE_PIECE + 50
    assert out.bytes == len(sent)


# ------------------------------------------------- sinks


def test_a_sink_that_refuses_sendfile_gets_the_bytes_written(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    body = lines_file(log, 30_000) + b"last line without newline"
    log.write_bytes(body)
    s = Sink(tmp_path / "out", sendfile=True, refuse=True)
    try:
        out = s.output(max_lines=BIG)
        assert cat(log, out) is None
        assert s.data() == body
        assert s.sendfile_calls == 1  # asked once, then never again
        assert out.notes["lines_counted"] is False
    finally:
        os.close(s.fd)


def test_widen_pipe_grows_a_pipe_and_never_shrinks_one(tmp_path: Path) -> None:
    r, w = os.pipe()
    big_r, big_w = os.pipe()
    plain = os.open(tmp_path / "plain", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.fcntl(big_w, fcntl.F_SETPIPE_SZ, 4 * PIPE_SIZE)
        widen_pipe(w)
        widen_pipe(big_w)
        widen_pipe(plain)  # not a pipe: left alone, no error
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
        assert fcntl.fcntl(big_w, fcntl.F_GETPIPE_SZ) == 4 * PIPE_SIZE
    finally:
        for fd in (r, w, big_r, big_w, plain):
            os.close(fd)
