"""`follow` (tail -F) on real files in tmp_path: polling, inotify, and rotation under both.

Polling tests drive the loop one pass at a time (`Stepper`); inotify tests either wait
for the exact bytes with a backstop of an hour (so only an inotify wake-up can deliver
them in time), or hold the follower in its wait while the test rotates, so a whole
burst of directory events is handled in one pass.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from logtorukun.gate import follow as follow_mod
from logtorukun.gate import watch
from logtorukun.gate.errors import Cancelled, Exit, GateError
from logtorukun.gate.follow import follow, moved_names
from logtorukun.gate.output import LimitReached, Output
from logtorukun.gate.readers import tag_at
from tests.support.fds import held_under

BIG = 10**12
Waiter = Callable[[float, "int | None"], bool]


def make_out(
    max_lines: int = BIG, max_bytes: int = BIG, waiter: Waiter | None = None
) -> tuple[Output, list[bytes]]:
    sink: list[bytes] = []
    return Output(sink.append, max_lines=max_lines, max_bytes=max_bytes, waiter=waiter), sink


def numbered(a: int, b: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(a, b))


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
        inotify: bool = False,
        start: tuple[int, int, int | None] | None = None,
        find: Callable[[int], int | None] | None = None,
    ) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.exc: BaseException | None = None
        self.reopened: list[int] = []
        self.looks = 0  # calls of reopen(): the first one comes after the start
        self._reopen = reopen or (lambda: open_or_none(path))

        def tracking_reopen() -> int | None:
            self.looks += 1
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
                    path=str(path) if inotify else None,
                    sibling=lambda name: open_or_none(path.parent / name),
                    start=start,
                    find=find,
                )
            except BaseException as exc:
                self.exc = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def started(self) -> None:
        """Wait until the follow has sent its first lines and looks for more: only
        what is written after that is new to it."""
        wait_for(lambda: self.looks > 0 or self.exc is not None)

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

    def waiter(self, seconds: float, fd: int | None = None) -> bool:
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


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, msg: object = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out {msg}"
        time.sleep(0.005)


def test_follow_initial_lines_partial_and_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow_mod, "LINE_CAP", 10)
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
    f.started()
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
    f.started()
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


# ---------------------------------------------------------------- inotify


@pytest.fixture
def no_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the path re-checked only once an hour, only inotify can deliver in time."""
    monkeypatch.setattr(follow_mod, "BACKSTOP", 3600.0)


def test_inotify_wakes_on_append_and_says_so(tmp_path: Path, no_backstop: None) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    before = held_under(tmp_path)
    out, sink = make_out()
    f = Follow(p, out, n=3, interval=3600.0, inotify=True)
    wait_for(lambda: b"".join(sink) == numbered(0, 3))
    with p.open("ab", buffering=0) as w:
        for i in range(3, 8):
            w.write(numbered(i, i + 1))
            upto = numbered(0, i + 1)
            wait_for(lambda: b"".join(sink) == upto)
    assert out.notes == {"follow": "inotify"}
    out.cancelled.set()  # a CancelFlag: wakes the poll() on the inotify fd at once
    assert isinstance(f.join(timeout=5), Cancelled)
    assert held_under(tmp_path) == before


def test_inotify_cancel_wakes_the_wait(tmp_path: Path, no_backstop: None) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    before = held_under(tmp_path)
    out, _ = make_out()
    f = Follow(p, out, interval=3600.0, inotify=True, seconds=3600.0)
    wait_for(lambda: out.notes.get("follow") == "inotify")
    out.cancelled.set()
    assert isinstance(f.join(timeout=5), Cancelled)
    assert held_under(tmp_path) == before


def test_inotify_rename_create_and_copytruncate(tmp_path: Path, no_backstop: None) -> None:
    """Real time, no stepping: rename+create, then copytruncate twice, each seen by an
    inotify wake-up (the backstop is an hour away)."""
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 5))
    before = held_under(tmp_path)
    out, sink = make_out()
    f = Follow(p, out, n=5, interval=3600.0, inotify=True)
    wait_for(lambda: b"".join(sink) == numbered(0, 5))
    old = open(p, "ab", buffering=0)  # noqa: SIM115
    os.rename(p, tmp_path / "app.log.1")
    p.touch()
    old.write(numbered(5, 8))  # the app still writes to the renamed file
    wait_for(lambda: b"".join(sink) == numbered(0, 8))
    old.close()
    with open(p, "ab", buffering=0) as new:
        new.write(numbered(8, 10))
        wait_for(lambda: b"".join(sink) == numbered(0, 10))
        for k in range(2):  # copytruncate, twice in a row
            shutil.copyfile(p, tmp_path / f"app.log.{k + 2}")
            os.truncate(p, 0)
            # Longer than what the file held before (28 > 24 bytes): the truncation is
            # still noticed, because the bytes before our old offset changed.
            new.write(b"cut\n")
            new.write(numbered(10 + 2 * k, 12 + 2 * k))
            want = numbered(0, 10) + b"".join(
                b"cut\n" + numbered(10 + 2 * i, 12 + 2 * i) for i in range(k + 1)
            )
            wait_for(lambda: b"".join(sink) == want, msg=sink)
    out.cancelled.set()
    assert isinstance(f.join(), Cancelled)
    assert held_under(tmp_path) == before


def test_inotify_two_rotations_before_the_follower_looks(
    tmp_path: Path, no_backstop: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rename+create rotations while the follower is held in its wait: the file that
    lived at the path in between is found through the rename events, read in its turn."""
    monkeypatch.setattr(follow_mod, "SWITCH_QUIET", 0.0)  # switch once a pass reads nothing
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    before = held_under(tmp_path)
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    f = Follow(p, out, n=3, interval=3600.0, inotify=True)
    stepper.idle()
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(3, 6))  # B: lives at the path only until the next rotation
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(6, 9))  # C
    for _ in range(4):
        stepper.step()
    assert b"".join(sink) == numbered(0, 9)
    with p.open("ab") as w:
        w.write(numbered(9, 10))
    stepper.step()
    assert b"".join(sink) == numbered(0, 10)
    assert out.notes == {"follow": "inotify"}
    stepper.finish()
    assert isinstance(f.join(), Cancelled)
    assert held_under(tmp_path) == before


def test_polling_two_rotations_one_pass_apart(tmp_path: Path) -> None:
    """Polling: a second rotation while the first new file still waits for the old one
    to go quiet; the three files are read in order, nothing lost or repeated."""
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    stepper = Stepper()
    out, sink = make_out(waiter=stepper.waiter)
    old = open(p, "ab", buffering=0)  # noqa: SIM115
    f = Follow(p, out, n=3)
    stepper.idle()
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(4, 6))  # B
    old.write(numbered(3, 4))  # A still growing
    stepper.step()  # reads A, finds B
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    os.rename(p, tmp_path / "app.log.1")
    p.write_bytes(numbered(6, 8))  # C
    old.close()
    for _ in range(4):
        stepper.step()
    assert b"".join(sink) == numbered(0, 8)
    assert out.notes == {"follow": "poll"}
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_inotify_unavailable_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "start", lambda d: "inotify_init1: Too many open files")
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    out, sink = make_out()
    f = Follow(p, out, interval=0.01, inotify=True)
    f.started()
    with p.open("ab", buffering=0) as w:
        w.write(numbered(0, 2))
        wait_for(lambda: b"".join(sink) == numbered(0, 2))
    assert out.notes == {"follow": "poll: inotify_init1: Too many open files"}
    out.cancelled.set()
    assert isinstance(f.join(), Cancelled)


@pytest.mark.parametrize(
    ("events", "want"),
    [
        ([], []),
        ([(watch.IN_CREATE, 0, "app.log")], [("app.log", False)]),
        ([(watch.IN_CREATE, 0, "other.log")], []),
        (
            [
                (watch.IN_MOVED_FROM, 1, "app.log"),
                (watch.IN_MOVED_TO, 1, "app.log.1"),
                (watch.IN_CREATE, 0, "app.log"),
                (watch.IN_MOVED_FROM, 2, "app.log.1"),
                (watch.IN_MOVED_TO, 2, "app.log.2"),
                (watch.IN_MOVED_FROM, 3, "app.log"),
                (watch.IN_MOVED_TO, 3, "app.log.1"),
                (watch.IN_CREATE, 0, "app.log"),
            ],
            [("app.log.2", True), ("app.log.1", True), ("app.log", False)],
        ),
        (  # moved out of the directory (no MOVED_TO), then deleted ones
            [
                (watch.IN_MOVED_FROM, 1, "app.log"),
                (watch.IN_CREATE, 0, "app.log"),
                (watch.IN_DELETE, 0, "app.log"),
            ],
            [],
        ),
        (  # a file renamed over the path replaces what was there
            [(watch.IN_CREATE, 0, "app.log"), (watch.IN_MOVED_TO, 5, "app.log")],
            [("app.log", False)],
        ),
    ],
)
def test_moved_names(events: list[tuple[int, int, str]], want: list[tuple[str, bool]]) -> None:
    assert moved_names(events, "app.log") == want


# ---------------------------------------------------------------- continuing at a position


def marked_out(
    waiter: Waiter,
) -> tuple[Output, list[bytes], list[dict[str, object]]]:
    """An Output that records data and positions in one ordered list of events."""
    sink: list[bytes] = []
    marks: list[dict[str, object]] = []
    out = Output(sink.append, max_lines=BIG, max_bytes=BIG, waiter=waiter, marker=marks.append)
    return out, sink, marks


def mark_of(p: Path, off: int) -> dict[str, object]:
    return {"ino": p.stat().st_ino, "off": off, "tag": zlib.crc32(p.read_bytes()[:off][-64:])}


def tag_of(p: Path, off: int) -> int:
    fd = os.open(p, os.O_RDONLY)
    try:
        return tag_at(fd, off)
    finally:
        os.close(fd)


def test_follow_from_an_offset_sends_exactly_what_came_after(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 10))
    ino, size = p.stat().st_ino, p.stat().st_size
    cut = len(numbered(0, 4))
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    with p.open("ab", buffering=0) as w:
        f = Follow(p, out, n=50, start=(ino, cut, tag_of(p, cut)))  # n is ignored now
        stepper.idle()
        assert b"".join(sink) == numbered(4, 10)
        assert marks[0] == mark_of(p, cut) and marks[-1] == mark_of(p, size)
        w.write(numbered(10, 12) + b"part")
        stepper.step()
        assert b"".join(sink) == numbered(4, 12)
        # the position covers complete lines only: "part" is still to come
        assert marks[-1] == mark_of(p, size + len(numbered(10, 12)))
        stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_from_past_the_end_says_the_file_was_truncated(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, start=(p.stat().st_ino, 10**9, None))
    stepper.idle()
    assert b"".join(sink) == numbered(0, 3)
    assert marks[0]["off"] == 0 and "truncated or replaced since offset 10" in str(marks[0]["gap"])
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_follow_from_a_reused_inode_is_not_mistaken_for_the_old_file(tmp_path: Path) -> None:
    """Same inode, same length, other bytes: the tag tells them apart."""
    p = tmp_path / "app.log"
    p.write_bytes(numbered(0, 3))
    tag = tag_of(p, 20)
    p.write_bytes(numbered(10, 13))  # rewritten in place: same inode
    stepper = Stepper()
    out, sink, marks = marked_out(stepper.waiter)
    f = Follow(p, out, start=(p.stat().st_ino, 20, tag))
    stepper.idle()
    assert b"".join(sink) == numbered(10, 13)
    assert "replaced since offset 20" in str(marks[0]["gap"])
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
    f = Follow(p, out, start=(old_ino, cut, tag_of(tmp_path / "app.log.1", cut)), find=find)
    stepper.idle()
    stepper.step()  # the old file is quiet for an interval: switch to the new one
    assert looked == [old_ino]
    assert b"".join(sink) == numbered(6, 13)  # nothing lost, nothing twice
    assert not any("gap" in m for m in marks)
    assert marks[-1] == mark_of(p, p.stat().st_size)
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
    f = Follow(p, out, start=(old_ino, 5, None), find=lambda ino: None)
    stepper.idle()
    assert b"".join(sink) == numbered(20, 22)
    assert marks[0]["ino"] == p.stat().st_ino and marks[0]["off"] == 0
    assert f"inode {old_ino}, offset 5" in str(marks[0]["gap"])
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_an_idle_follow_still_marks_its_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow_mod, "MARK_EVERY", 0.0)
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
    assert marks[-1] == mark_of(p, p.stat().st_size)
    stepper.finish()
    assert isinstance(f.join(), Cancelled)


def test_a_reused_inode_is_a_new_file(tmp_path: Path) -> None:
    """A file left behind is remembered by inode *and* first bytes: once it is deleted
    its inode number may be given to the next new file, which must still be read."""
    cur_p, old, new = tmp_path / "app.log", tmp_path / "old.log", tmp_path / "new.log"
    cur_p.write_bytes(b"")
    old.write_bytes(numbered(0, 10))
    new.write_bytes(numbered(50, 51))
    out, _ = make_out()
    cur = os.open(cur_p, os.O_RDONLY)
    track = follow_mod._Path(follow_mod._Follower(cur, out, 1e18, "x"), lambda: None, None, "")
    fds = [os.open(old, os.O_RDONLY), os.open(new, os.O_RDONLY)]
    try:
        st = os.fstat(fds[0])
        ident = (st.st_dev, st.st_ino)
        track.done.append((ident, numbered(0, 10)[:64]))
        assert track.known(ident, fds[0])  # the same file again (found under a new name)
        assert not track.known(ident, fds[1])  # that number, other bytes: a new file
    finally:
        for fd in fds:
            os.close(fd)
        track.close()
