"""Where a request's bytes go: the policy's line and byte caps, cancellation, waiting.

Readers only ever call `Output.write` with whole lines and `Output.sleep` while they
wait for more; the same readers serve a one-shot `ssh` request (bytes to stdout) and a
bridge request (bytes into frames), which is what keeps both on one code path.
"""

from __future__ import annotations

import os
import select
import time

from .errors import Cancelled, Exit, GateError

TYPE_CHECKING = False  # typing costs start-up; only the checker needs these
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from .cancel import CancelFlag


class LimitReached(GateError):
    """Output stopped at a cap; what fitted was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(Exit.LIMIT, reason)


class Flag:
    """The cancellation flag of a one-shot request. One thread sets and reads it, so it
    needs no lock, nor the `threading` import (with what it imports, a large share of a
    one-shot gate's start-up). Threads (a bridge) get a `cancel.CancelFlag`."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> bool:
        if not self._set:
            time.sleep(seconds)  # nothing else could set it meanwhile
        return self._set


# A file's bytes sent without counting go in pieces of this size: the request's clock
# and cancellation are looked at between pieces, and `bytes` is exact up to the last one.
FILE_PIECE = 1 << 20
_TAIL = 64  # the last bytes of an uncounted span, kept to see it unchanged at a recount


class Output:
    """Counts what is sent and stops at `max_lines` / `max_bytes`, on a line boundary.

    Bytes sent without counting their lines (`uncounted`) count as one line each, an
    upper bound (a line has at least one byte), so `lines + uncounted` never passes the
    line cap. Where that bound would stop the output, the file spans sent uncounted are
    read again and counted, so the cap binds exactly where the lines really end.
    """

    def __init__(
        self,
        sink: Callable[[bytes], None],
        *,
        max_lines: int,
        max_bytes: int,
        cancelled: threading.Event | Flag | None = None,
        waiter: Callable[[float, int | None], bool] | None = None,
        marker: Callable[[dict[str, object]], None] | None = None,
        sendfile: Callable[[int, int, int], int] | None = None,
    ) -> None:
        self._sink = sink
        # (fd, offset, count) -> bytes sent, or -1 if this output cannot take sendfile
        self._sendfile = sendfile
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        if cancelled is None:
            from .cancel import CancelFlag

            cancelled = CancelFlag()
        self.cancelled = cancelled
        self._waiter = waiter
        self.lines = 0  # lines counted
        self.uncounted = 0  # bytes sent without counting their lines
        # (fd, offset, length, last bytes) of the file data among them: what a recount reads
        self._spans: list[tuple[int, int, int, bytes]] = []
        self.bytes = 0
        self.truncated = False
        # Facts a reader wants in the request's end record (e.g. how a follow waits).
        self.notes: dict[str, object] = {}
        # (inode, offset) just past the last byte sent from a file: where a follow that
        # continues this output starts (`tail -F --from INO:OFF`). `marker` (a bridge
        # request that asked for positions) is told each new position, in order with data.
        self.position: tuple[int, int, int] | None = None  # (inode, offset, tag)
        self._marker = marker
        self.marked_at = time.monotonic()
        self.deadline = float("inf")
        self.deadline_reason = ""

    def start_clock(self, seconds: float, reason: str = "") -> None:
        """From now on the request may run `seconds` (the policy's wall-clock limit)."""
        self.deadline = time.monotonic() + seconds
        self.deadline_reason = reason or f"stopped after {seconds:g} s (time limit in the policy)"

    def check_time(self) -> None:
        """Every reader calls this (directly, or through `write`) between reads, so no
        input, however long or slow to decode, keeps a request past its limit, or past
        its cancellation."""
        if self.cancelled.is_set():
            raise Cancelled()
        if time.monotonic() >= self.deadline:
            self.truncated = True
            raise LimitReached(self.deadline_reason)

    def write(self, data: bytes) -> None:
        """Send whole lines (a final line without newline is allowed only at end of input)."""
        if self.cancelled.is_set():
            raise Cancelled()
        if not data:
            return
        self.check_time()
        n_lines = count_lines(data) + (0 if data.endswith(b"\n") else 1)
        if self.uncounted and self.lines + self.uncounted + n_lines > self.max_lines:
            self._recount()
        lines = self.lines + self.uncounted
        if lines + n_lines <= self.max_lines and self.bytes + len(data) <= self.max_bytes:
            self._send(data, n_lines)
            return
        # Cut at the last line that fits both caps, send that, then stop.
        room_lines = self.max_lines - lines
        room_bytes = self.max_bytes - self.bytes
        cut = 0
        kept = 0
        while kept < room_lines:
            nl = data.find(b"\n", cut)
            end = len(data) if nl < 0 else nl + 1
            if end > room_bytes or end == cut:
                break
            cut = end
            kept += 1
            if nl < 0:
                break
        if cut:
            self._send(data[:cut], kept)
        self.truncated = True
        which = "max_lines" if self.lines + self.uncounted >= self.max_lines else "max_bytes"
        limit = self.max_lines if which == "max_lines" else self.max_bytes
        unit = "lines" if which == "max_lines" else "bytes"
        raise LimitReached(f"output truncated at {limit} {unit} ({which} in the policy)")

    def write_bulk(self, data: bytes) -> None:
        """`write` for long streams (cat, grep output): lines are counted only while the
        line cap could stop the stream before the byte cap does.

        Every line has at least one byte, so once the lines still allowed are at least
        the bytes still allowed, the byte cap always binds first and counting (the
        costliest part of streaming) buys nothing; the end record then says
        `"lines_counted": false` and `lines` counts only the lines counted."""
        room = self.max_bytes - self.bytes
        if self.max_lines - self.lines - self.uncounted < room:
            self.write(data)
            return
        if self.cancelled.is_set():
            raise Cancelled()
        self.check_time()
        if len(data) <= room:
            self._send(data, -1)
            return
        cut = data.rfind(b"\n", 0, room) + 1
        if cut:
            self._send(data[:cut], -1)
        self.truncated = True
        raise LimitReached(f"output truncated at {self.max_bytes} bytes (max_bytes in the policy)")

    def send_file(self, fd: int, offset: int, count: int) -> bool:
        """Send `count` bytes of `fd` from `offset` (whole lines) without counting them,
        if no cap can bind on them; False (nothing sent) otherwise. They go by the
        output's `sendfile` where it has one (a one-shot's stdout: sendfile; a bridge
        stream: splice into DATA frames), never copied through Python; otherwise they
        are read and given to the sink in pieces. The file may shrink meanwhile: fewer
        bytes go."""
        if count <= 0:
            return False
        if (
            self.max_lines - self.lines - self.uncounted < count
            or self.max_bytes - self.bytes < count
        ):
            return False
        last = os.pread(fd, min(_TAIL, count), offset + count - min(_TAIL, count))
        pos, end = offset, offset + count
        try:
            while pos < end:
                if self.cancelled.is_set():
                    raise Cancelled()
                self.check_time()  # the sink's own deadline holds during the send, too
                want = min(FILE_PIECE, end - pos)
                sent = -1 if self._sendfile is None else self._sendfile(fd, pos, want)
                if sent < 0:  # this output cannot take sendfile: read and write
                    self._sendfile = None
                    piece = os.pread(fd, want, pos)
                    if piece:
                        self._sink(piece)
                    sent = len(piece)
                    del piece
                pos += sent
                self.bytes += sent
                self.uncounted += sent
                if sent < want:
                    break  # the file shrank under us
        except (BrokenPipeError, ConnectionError) as exc:
            self.cancelled.set()
            raise Cancelled() from exc
        finally:
            if pos > offset:
                self.notes["lines_counted"] = False
                self._spans.append((fd, offset, pos - offset, last if pos == end else b""))
        return True

    def _recount(self) -> None:
        """Count the lines of the file spans sent uncounted, reading them again: only
        where the upper bound would stop the output, so the line cap binds exactly. A
        span whose file changed since (shorter, or other bytes at its end) keeps
        counting one line per byte: never past the cap, though it may stop early."""
        spans, self._spans = self._spans, []
        for fd, offset, length, last in spans:
            counted = 0
            pos, end = offset, offset + length
            while pos < end:
                self.check_time()
                piece = os.pread(fd, min(FILE_PIECE, end - pos), pos)
                if not piece:
                    break
                counted += count_lines(piece)
                pos += len(piece)
                del piece
            k = min(_TAIL, length)
            if pos == end and last and os.pread(fd, k, end - k) == last:
                self.lines += counted
                self.uncounted -= length
        if not self.uncounted:
            self.notes.pop("lines_counted", None)

    def _send(self, data: bytes, n_lines: int) -> None:
        """`n_lines` -1: not counted (each byte counts as a line towards the cap)."""
        try:
            self._sink(data)
        except (BrokenPipeError, ConnectionError) as exc:
            self.cancelled.set()
            raise Cancelled() from exc
        if n_lines < 0:
            self.uncounted += len(data)
            self.notes["lines_counted"] = False
        else:
            self.lines += n_lines
        self.bytes += len(data)

    @property
    def wants_marks(self) -> bool:
        return self._marker is not None

    def mark(self, ino: int, off: int, tag: int, gap: str = "") -> None:
        """Record the position reached; with a marker, also send it (and a gap, if any:
        data that could not be read, and why)."""
        self.position = (ino, off, tag)
        self.marked_at = time.monotonic()
        if self._marker is None:
            return
        if self.cancelled.is_set():
            raise Cancelled()
        body: dict[str, object] = {"ino": ino, "off": off, "tag": tag}
        if gap:
            body["gap"] = gap
        try:
            self._marker(body)
        except (BrokenPipeError, ConnectionError) as exc:
            self.cancelled.set()
            raise Cancelled() from exc

    def sleep(self, seconds: float, fd: int | None = None) -> None:
        """Wait up to `seconds` for more input, or until `fd` (if given) is readable;
        raises Cancelled as soon as the client has gone."""
        flag = self.cancelled
        if self._waiter is not None:
            gone = self._waiter(seconds, fd)
        elif fd is None:
            gone = flag.wait(seconds)
        elif not isinstance(flag, Flag) and isinstance(flag, _cancel_flag()):
            gone = flag.wait_fd(fd, seconds)
        else:  # a plain flag cannot wake a poll(): look at it every 50 ms
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            end = time.monotonic() + seconds
            while not (gone := flag.is_set()):
                left = end - time.monotonic()
                if left <= 0 or poller.poll(int(min(left, 0.05) * 1000) + 1):
                    break
        if gone or self.cancelled.is_set():
            self.cancelled.set()
            raise Cancelled()


PIPE_SIZE = 256 << 10


def widen_pipe(fd: int) -> None:
    """Let the pipe on `fd` (sshd reads it) hold PIPE_SIZE bytes instead of Linux's
    64 KiB, for a long stream: the gate then blocks, and sshd wakes, a quarter as often
    (a fifth of the gate's CPU per GiB: bench.stream_cpu). Only for long
    streams, because a pipe's size counts against the gate user's allowance of pipe
    buffers (fs.pipe-user-pages-soft); past it the kernel refuses, and the stream just
    goes at the default size. Never shrinks a pipe; anything but a pipe is left alone."""
    try:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):  # not a pipe, over the allowance, not Linux
        pass


def _cancel_flag() -> type[CancelFlag]:
    from .cancel import CancelFlag  # a flag that can wake a poll() belongs to threads

    return CancelFlag


def count_lines(data: bytes) -> int:
    """Newlines in `data`. For large buffers `bytes.count` of one byte is a plain loop
    (about 0.6 GB/s here); `replace` scans with memchr and is about 3x faster."""
    if len(data) < 65536:
        return data.count(b"\n")
    return len(data) - len(data.replace(b"\n", b""))


def deadline_after(seconds: float) -> float:
    """A monotonic deadline; readers compare `time.monotonic()` against it."""
    return time.monotonic() + seconds
