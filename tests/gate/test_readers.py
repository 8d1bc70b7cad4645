"""tail / follow / gzip readers, on real files in tmp_path."""

from __future__ import annotations

import gzip
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logtorukun.gate import readers
from logtorukun.gate.errors import Cancelled, Exit, GateError
from logtorukun.gate.output import LimitReached, Output
from logtorukun.gate.readers import follow, tail
from tests.gate.conftest import PreadCounter
from tests.support.fds import held_under

BIG = 10**12


def make_out(
    max_lines: int = BIG, max_bytes: int = BIG, waiter: Callable[[float], bool] | None = None
) -> tuple[Output, list[bytes]]:
    sink: list[bytes] = []
    return Output(sink.append, max_lines=max_lines, max_bytes=max_bytes, waiter=waiter), sink


@contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


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
    assert pread_bytes.total <= (1 << 20) + 2


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
    assert len(sink) <= 5  # about one write per MiB, not one per line
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
        mp.setattr(readers, "_FIRST_BLOCK", block)  # many block boundaries
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
        gzip.compress(numbered(0, 1000))[:-30],  # truncated
        gzip.compress(b"ok\n") + b"garbage after a member",
    ],
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


# ---------------------------------------------------------------- follow


def open_or_none(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None


class Follow:
    """`follow` in a thread; its exception (it always ends with one) kept for the test."""

    def __init__(
        self,
        path: Path,
        out: Output,
        *,
        n: int = 0,
        interval: float = 0.005,
        seconds: float = 30.0,
        reopen: Callable[[], int | None] | None = None,
        start: tuple[int, int] | None = None,
        find: Callable[[int], int | None] | None = None,
    ) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.exc: BaseException | None = None
        self.reopened: list[int] = []
        self._reopen = reopen or (lambda: open_or_none(path))

        def tracking_reopen() -> int | None:
            fd = self._reopen()
            if fd is not None:
                self.reopened.append(fd)
            return fd

        def run() -> None:
            try:
                follow(
                    self.fd,
                    tracking_reopen,
                    n,
                    out,
                    deadline=time.monotonic() + seconds,
                    deadline_reason="follow stopped after the policy's follow_max_seconds",
                    interval=interval,
                    start=start,
                    find=find,
                )
            except BaseException as exc:
                self.exc = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 10.0) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "follow did not stop"
        return self.exc


class Stepper:
    """An `Output` waiter that lets the test run `follow` one interval at a time."""

    def __init__(self) -> None:
        self._asleep = threading.Semaphore(0)
        self._go = threading.Semaphore(0)
        self.stop = False

    def waiter(self, seconds: float) -> bool:
        self._asleep.release()
        self._go.acquire()
        return self.stop

    def idle(self) -> None:
        assert self._asleep.acquire(timeout=10), "follow never went to sleep"

    def step(self) -> None:
        self._go.release()
        self.idle()

    def finish(self) -> None:
        self.stop = True
        self._go.release()


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_follow_initial_lines_partial_and_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "LINE_CAP", 10)
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10) + b"half")
    before = held_under(tmp_path)
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    with p.open("ab", buffering=0) as w:
        f = Follow(p, out, n=3)
        stepper.idle()
        assert b"".join(sink) == numbered(7, 10)  # complete lines only; "half" waits
        w.write(b" done\nnext")
        stepper.step()
        assert b"".join(sink) == numbered(7, 10) + b"half done\n"
        w.write(b"x" * 22)  # "next" + 22 bytes: longer than LINE_CAP (10)
        stepper.step()
        assert b"".join(sink).endswith(b"half done\nnextxxxxxx\nxxxxxxxxxx\n")
        w.write(b"\n")
        stepper.step()
        assert b"".join(sink).endswith(b"\nxxxxxxxxxx\nxxxxxx\n")
        stepper.finish()
    assert isinstance(f.join(), Cancelled)
    assert held_under(tmp_path) == before


@pytest.mark.parametrize(
    ("initial", "n", "first", "rest"),
    [
        (b"abc", 5, b"", b"abc\n"),  # only a partial line: nothing yet
        (numbered(0, 10) + b"z" * 20_000, 2, numbered(8, 10), b"z" * 20_000 + b"\n"),
        (numbered(0, 10), 2, numbered(8, 10), b"\n"),  # an empty line arrives
        (b"", 3, b"", b"\n"),
    ],
)
def test_follow_start(tmp_path: Path, initial: bytes, n: int, first: bytes, rest: bytes) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(initial)
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    f = Follow(p, out, n=n)
    stepper.idle()
    assert b"".join(sink) == first
    with p.open("ab") as w:
        w.write(b"\n")
    stepper.step()
    assert b"".join(sink) == first + rest
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_n_zero_and_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    with p.open("ab", buffering=0) as w:
        f = Follow(p, out, n=0)
        stepper.idle()
        assert sink == []
        os.unlink(p)  # path gone: keep reading the file we have
        w.write(numbered(10, 12))
        stepper.step()
        stepper.step()
        assert b"".join(sink) == numbered(10, 12)
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_rename_create_with_overlapping_writer(tmp_path: Path) -> None:
    """logrotate `create`: the new file appears while the app still writes to the old
    one until postrotate makes it reopen. Nothing may be lost or repeated."""
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    before = held_under(tmp_path)
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    old = open(p, "ab", buffering=0)  # noqa: SIM115
    f = Follow(p, out, n=10)
    stepper.idle()
    assert b"".join(sink) == numbered(0, 10)
    os.rename(p, tmp_path / "app.log.1")
    p.touch()  # logrotate's `create`
    old.write(numbered(10, 15))
    stepper.step()  # reads 10..14 from the old file, sees the new one
    old.write(numbered(15, 20))
    stepper.step()  # the old file is still growing: stay on it
    old.write(numbered(20, 22))
    stepper.step()  # and still
    old.close()
    with open(p, "ab", buffering=0) as new:  # the app reopens (postrotate)
        new.write(numbered(22, 25))
        stepper.step()  # old was quiet for an interval: switch and read the new file
        assert b"".join(sink) == numbered(0, 25)
        new.write(numbered(25, 27))
        stepper.step()
    assert b"".join(sink) == numbered(0, 27)
    stepper.finish()
    assert isinstance(f.join(), Cancelled)
    assert held_under(tmp_path) == before


def test_follow_rotation_flushes_partial_line(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    with open(p, "ab", buffering=0) as old:
        f = Follow(p, out)
        stepper.idle()
        old.write(b"a\nunfinished")
        stepper.step()
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(b"b\n")
    for _ in range(3):
        stepper.step()
    assert b"".join(sink) == b"a\nunfinished\nb\n"
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_copytruncate_steps(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 100))
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    with open(p, "ab", buffering=0) as w:  # O_APPEND, as copytruncate requires
        f = Follow(p, out, n=5)
        stepper.idle()
        w.write(numbered(100, 110) + b"cut")
        stepper.step()
        assert b"".join(sink) == numbered(95, 110)
        shutil.copyfile(p, tmp_path / "app.log.1")
        os.truncate(p, 0)
        w.write(numbered(110, 115))
        stepper.step()
        # The held partial line is flushed; the new content is read from offset 0.
        assert b"".join(sink) == numbered(95, 110) + b"cut\n" + numbered(110, 115)
        # The inherent race: lines written after our last read and before the
        # truncate live only in the copy.
        w.write(numbered(115, 118))
        shutil.copyfile(p, tmp_path / "app.log.1")
        os.truncate(p, 0)
        w.write(numbered(118, 120))
        stepper.step()
        assert b"".join(sink).endswith(numbered(110, 115) + numbered(118, 120))
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_rename_create_writer_thread(tmp_path: Path) -> None:
    """A writer appends numbered lines non-stop and rotates (rename, finish old, create
    new) every 400 lines: the follower's output must be exactly every line once."""
    p = tmp_path / "app.log"
    total = 3000
    p.write_bytes(b"")
    before = held_under(tmp_path)
    out, sink = make_out()

    def writer() -> None:
        w = open(p, "ab", buffering=0)  # noqa: SIM115
        rotations = 0
        for i in range(total):
            w.write(b"line %06d\n" % i)
            if i % 400 == 399:
                rotations += 1
                os.rename(p, tmp_path / f"app.log.{rotations}")
                # keep appending to the renamed file for a while
            elif i % 400 == 20 and rotations:
                w.close()
                w = open(p, "ab", buffering=0)  # noqa: SIM115
            if i % 10 == 0:
                time.sleep(0.001)
        w.close()

    f = Follow(p, out, interval=0.002)
    t = threading.Thread(target=writer)
    t.start()
    t.join()
    want = numbered(0, total)
    wait_for(lambda: len(b"".join(sink)) >= len(want) or f.exc is not None)
    out.cancelled.set()
    assert isinstance(f.join(), Cancelled)
    assert b"".join(sink) == want
    assert len(f.reopened) > 10
    assert held_under(tmp_path) == before


def test_follow_copytruncate_writer_thread(tmp_path: Path) -> None:
    """copytruncate between a writer's lines: nothing repeated, nothing lost, provided the
    follower has read everything before the truncate (the race is the test's to avoid)."""
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    out, sink = make_out()
    calls = 0
    resume = threading.Event()
    resume.set()

    def reopen() -> int | None:
        nonlocal calls
        calls += 1
        return open_or_none(p)

    f = Follow(p, out, interval=0.002, reopen=reopen)
    written = 0
    lock = threading.Lock()
    finished = threading.Event()

    def writer() -> None:
        nonlocal written
        with open(p, "ab", buffering=0) as w:
            for i in range(2000):
                resume.wait()
                with lock:
                    w.write(b"line %06d\n" % i)
                    written = i + 1
                if i % 10 == 0:
                    time.sleep(0.001)
        finished.set()

    t = threading.Thread(target=writer)
    t.start()
    for rotation in range(3):
        wait_for(lambda: written >= 500 * (rotation + 1))
        resume.clear()
        with lock:
            upto = written
        wait_for(lambda: b"".join(sink).endswith(b"line %06d\n" % (upto - 1)))
        shutil.copyfile(p, tmp_path / f"app.log.{rotation + 1}")
        os.truncate(p, 0)
        seen = calls
        wait_for(lambda: calls >= seen + 2)  # a full pass has noticed the truncation
        resume.set()
    t.join()
    assert finished.is_set()
    want = numbered(0, 2000)
    wait_for(lambda: len(b"".join(sink)) >= len(want) or f.exc is not None)
    out.cancelled.set()
    assert isinstance(f.join(), Cancelled)
    assert b"".join(sink) == want


def test_follow_cancelled_from_another_thread(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    before = held_under(tmp_path)
    out, sink = make_out()
    f = Follow(p, out, n=3, interval=0.2)
    wait_for(lambda: len(sink) > 0)
    out.cancelled.set()
    assert isinstance(f.join(timeout=5), Cancelled)
    assert b"".join(sink) == numbered(0, 3)
    assert held_under(tmp_path) == before


def test_follow_deadline(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    before = held_under(tmp_path)
    out, _ = make_out()
    f = Follow(p, out, n=1, interval=0.02, seconds=0.1)
    exc = f.join()
    assert isinstance(exc, LimitReached) and exc.code == Exit.LIMIT
    assert exc.reason == "follow stopped after the policy's follow_max_seconds"
    assert held_under(tmp_path) == before


def test_follow_caps_end_it(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    stepper = Stepper()
    out, sink = make_out(max_lines=5, waiter=stepper.waiter)
    with open(p, "ab", buffering=0) as w:
        f = Follow(p, out, n=3)
        stepper.idle()
        w.write(numbered(3, 10))
        stepper._go.release()
        exc = f.join()
    assert isinstance(exc, LimitReached) and "max_lines" in exc.reason
    assert b"".join(sink) == numbered(0, 5)


def test_follow_closes_fds_when_reopen_raises(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"x\n")
    other = tmp_path / "other.log"
    other.write_bytes(b"")
    before = held_under(tmp_path)
    out, _ = make_out()
    calls = 0

    def reopen() -> int | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            return os.open(other, os.O_RDONLY)  # a rotation candidate, held open
        raise GateError(Exit.NOT_FOUND, "gone")

    # the candidate is held until the old file is quiet, then switched to; the next
    # reopen raises
    f = Follow(p, out, reopen=reopen, interval=0.001)
    exc = f.join()
    assert isinstance(exc, GateError) and exc.code == Exit.NOT_FOUND
    assert held_under(tmp_path) == before


# ---------------------------------------------------------------- continuing at a position


def marked_out(
    waiter: Callable[[float], bool],
) -> tuple[Output, list[bytes], list[dict[str, object]]]:
    """An Output that records data and positions in one ordered list of events."""
    sink: list[bytes] = []
    marks: list[dict[str, object]] = []
    out = Output(sink.append, max_lines=BIG, max_bytes=BIG, waiter=waiter, marker=marks.append)
    return out, sink, marks


def test_tail_reports_where_it_ended(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    out, _sink = make_out()
    with opened(p) as fd:
        tail(fd, 3, out)
    assert out.position == (p.stat().st_ino, p.stat().st_size)


def test_follow_from_an_offset_sends_exactly_what_came_after(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    ino, size = p.stat().st_ino, p.stat().st_size
    cut = len(numbered(0, 4))
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    with p.open("ab", buffering=0) as w:
        f = Follow(p, out, n=50, start=(ino, cut))  # n is ignored when continuing
        stepper.idle()
        assert b"".join(sink) == numbered(4, 10)
        assert marks[0] == {"ino": ino, "off": cut} and marks[-1] == {"ino": ino, "off": size}
        w.write(numbered(10, 12) + b"part")
        stepper.step()
        assert b"".join(sink) == numbered(4, 12)
        # the position covers complete lines only: "part" is still to come
        assert marks[-1] == {"ino": ino, "off": size + len(numbered(10, 12))}
        stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_from_past_the_end_says_the_file_was_truncated(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, start=(p.stat().st_ino, 10**9))
    stepper.idle()
    assert b"".join(sink) == numbered(0, 3)
    assert marks[0]["off"] == 0 and "truncated below offset 1000000000" in str(marks[0]["gap"])
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_from_a_rotated_file_finishes_it_then_the_new_one(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    old_ino, cut = p.stat().st_ino, len(numbered(0, 6))
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(10, 13))
    looked: list[int] = []

    def find(ino: int) -> int | None:
        looked.append(ino)
        return os.open(tmp_path / "app.log.1", os.O_RDONLY)

    before = held_under(tmp_path)
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, start=(old_ino, cut), find=find)
    stepper.idle()
    stepper.step()  # the old file is quiet for an interval: switch to the new one
    assert looked == [old_ino]
    assert b"".join(sink) == numbered(6, 13)  # nothing lost, nothing twice
    assert not any("gap" in m for m in marks)
    assert marks[-1] == {"ino": p.stat().st_ino, "off": p.stat().st_size}
    stepper.finish()
    assert isinstance(f.join(), Cancelled)
    assert set(held_under(tmp_path) - before) <= {str(p)}  # the old file's fd was closed


def test_follow_from_a_file_rotated_away_shows_the_gap(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    old_ino = p.stat().st_ino
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(20, 22))
    os.unlink(tmp_path / "app.log.1")
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, start=(old_ino, 5), find=lambda ino: None)
    stepper.idle()
    assert b"".join(sink) == numbered(20, 22)
    assert marks[0]["ino"] == p.stat().st_ino and marks[0]["off"] == 0
    assert f"inode {old_ino}, offset 5" in str(marks[0]["gap"])
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_an_idle_follow_still_marks_its_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "MARK_EVERY", 0.0)
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 2))
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, n=0)
    stepper.idle()
    first = len(marks)
    stepper.step()
    stepper.step()
    assert len(marks) >= first + 2 and sink == []
    assert marks[-1] == {"ino": p.stat().st_ino, "off": p.stat().st_size}
    stepper.finish()
    assert isinstance(f.join(), Cancelled)
