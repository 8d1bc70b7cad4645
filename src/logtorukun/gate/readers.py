"""Read a log file from an already-open descriptor: tail from the end, follow across rotation.

Every reader takes a read-only fd of a regular file that the caller opened safely
(`paths.py`); nothing here opens a path. Reads use `os.pread` with our own offsets, so
the fd's file position is never used or changed. All output goes through `Output`,
which enforces the policy caps (raising `LimitReached`) and notices a client that has
gone (raising `Cancelled`); both propagate to the caller untouched.

Line protocol: `Output.write` gets whole lines. Where a reader has to cut a line it
cannot hold (longer than `LINE_CAP` in `follow` and in the gz scan of `range`), each
piece is sent with a newline appended, so the stream stays line-structured.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator

from .errors import Exit, GateError
from .output import LimitReached, Output

CHUNK = 1 << 20  # forward reads and writes: large, so throughput is not per-line
LINE_CAP = 1 << 20  # a partial line held longer than this goes out in pieces
_FIRST_BLOCK = 1 << 14  # backward scan: 16 KiB covers `tail -n 200` of typical logs
_MAX_BLOCK = 1 << 20
SWITCH_GRACE = 5.0  # seconds a renamed-away file may keep growing before we move on
MARK_EVERY = 1.0  # an idle follow re-sends its position this often: the client's heartbeat
_GZ_INPUT = 1 << 18

__all__ = ["CHUNK", "LINE_CAP", "emit_span", "follow", "gunzip_chunks", "limit_reached", "tail"]


def limit_reached(out: Output, which: str) -> LimitReached:
    """The same error `Output.write` raises, for readers that stop *before* a cap.

    `tail` sends the newest lines that fit rather than letting `Output` cut the oldest
    ones, so it has to report the truncation itself; `which` is "max_lines" or "max_bytes".
    """
    out.truncated = True
    if which == "max_lines":
        return LimitReached(f"output truncated at {out.max_lines} lines (max_lines in the policy)")
    return LimitReached(f"output truncated at {out.max_bytes} bytes (max_bytes in the policy)")


class _Shrunk(Exception):
    """The file got shorter under a read (copytruncate); the caller starts over."""


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise _Shrunk()
    return data


def _tail_start(
    pread: Callable[[int, int], bytes], end: int, n: int, budget: int
) -> tuple[int, int]:
    """Where the last lines of `[0, end)` begin: `(start, count)` with `count <= n` lines
    and `end - start <= budget` bytes.

    Scans backwards in growing blocks and never looks below `end - budget - 1`, so the
    cost is bounded by the answer (or by the byte budget for absurdly long lines), never
    by the file size. A final newline ends the last line; it does not start another one.
    """
    if end <= 0 or n <= 0 or budget <= 0:
        return end, 0
    floor = max(0, end - budget - 1)  # a newline here starts a line that still fits
    pos = end
    found = 0  # separators found: the last `found` lines start at `earliest`
    earliest = end
    block = _FIRST_BLOCK
    first = True
    while pos > floor:
        lo = max(floor, pos - block)
        buf = pread(pos - lo, lo)
        hi = len(buf)
        if first:
            first = False
            if buf.endswith(b"\n"):
                hi -= 1
        c = buf.count(b"\n", 0, hi)
        if found + c < n:
            if c:
                found += c
                earliest = lo + buf.find(b"\n", 0, hi) + 1
        else:
            while True:
                i = buf.rfind(b"\n", 0, hi)
                found += 1
                if found == n:
                    return lo + i + 1, n
                hi = i
        pos = lo
        block = min(block * 2, _MAX_BLOCK)
    if floor == 0 and end <= budget:
        return 0, found + 1  # the first line of the file, which has no separator before it
    return earliest, found


def emit_span(fd: int, start: int, end: int, out: Output, max_lines: int | None = None) -> int:
    """Send `[start, end)` (which begins at a line start) as whole lines, in large writes.

    Returns how many lines were sent; stops quietly after `max_lines`. A line that could
    never fit the byte cap is not buffered past it: the cap is reported at once.
    """
    sent = 0
    pos = start
    carry = b""
    # With a line limit, start small and grow: `-m 200` should not read a whole MiB.
    size = CHUNK if max_lines is None else min(_FIRST_BLOCK * 4, CHUNK)
    while pos < end:
        want = min(size, end - pos)
        size = min(size * 2, CHUNK)
        data = os.pread(fd, want, pos)
        if len(data) < want:
            end = pos + len(data)  # the file shrank under us: send what there is
        pos += len(data)
        buf = carry + data if carry else data
        cut = len(buf) if pos >= end else buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) > out.max_bytes - out.bytes:
                raise limit_reached(out, "max_bytes")
            carry = buf
            continue
        chunk, carry = buf[:cut], buf[cut:]
        nls = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        if max_lines is not None and sent + nls >= max_lines:
            out.write(first_lines(chunk, max_lines - sent))
            return max_lines
        sent += nls
        out.write(chunk)
    return sent


def first_lines(data: bytes, k: int) -> bytes:
    """The first `k` lines of `data` (all of it if it has fewer)."""
    pos = 0
    for _ in range(k):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return data
        pos = nl + 1
    return data[:pos]


def _tail_plain(fd: int, end: int, n: int, out: Output) -> None:
    """The last `n` lines of `[0, end)`: the newest lines that fit the caps, then the cap
    is reported if that was fewer than the file has."""
    room_lines = out.max_lines - out.lines
    room_bytes = out.max_bytes - out.bytes
    n_eff = min(n, room_lines)
    start, count = _tail_start(lambda ln, off: _pread_exact(fd, ln, off), end, n_eff, room_bytes)
    emit_span(fd, start, end, out)
    if count < n and start > 0:
        raise limit_reached(out, "max_lines" if count == room_lines else "max_bytes")


def tail(fd: int, n: int, out: Output, *, gz: bool = False) -> None:
    """Send the last `n` lines of the file open on `fd` (which stays open: the caller owns it).

    Plain files are read backwards from the end, so `tail -n 200` of a 1 GiB log reads a
    few KiB. If the last `n` lines do not fit the caps, the *newest* lines that fit are
    sent (that is what a tail is for) and `LimitReached` is raised; a single line longer
    than the byte cap is not sent at all. A last line without a newline is sent as is.
    `gz=True` decompresses the whole stream (gzip has no index to seek with) keeping at
    most the byte cap of lines in memory.
    """
    if n <= 0:
        return
    if gz:
        _tail_gz(fd, n, out)
        return
    for _attempt in range(3):
        st = os.fstat(fd)
        end = st.st_size
        try:
            try:
                _tail_plain(fd, end, n, out)
            finally:
                out.position = (st.st_ino, end)  # a follow may continue from here
        except _Shrunk:
            continue  # copytruncate while we were scanning: look again at the new size
        return
    raise GateError(Exit.FAILED, "the file kept shrinking while it was being read")


def gunzip_chunks(fd: int, chunk: int = 0) -> Iterator[bytes]:
    """Decompressed data of a gzip file, at most `chunk` (default `CHUNK`) bytes at a time,
    so memory stays bounded even for a decompression bomb. Handles multi-member files and
    NUL padding after a member, like `gzip -d`; corrupt or truncated data raises
    `GateError(FAILED)`."""
    import zlib  # only the gz path pays for it

    chunk = chunk or CHUNK
    offset = 0
    data = b""
    d: zlib._Decompress | None = None  # None: between members
    try:
        while True:
            if not data:
                data = os.pread(fd, _GZ_INPUT, offset)
                offset += len(data)
                if not data:
                    if d is not None:
                        raise GateError(Exit.FAILED, "the compressed file is truncated")
                    return
            if d is None:
                data = data.lstrip(b"\0")
                if not data:
                    continue
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            piece = d.decompress(data, chunk)
            data = d.unconsumed_tail
            if piece:
                yield piece
            if d.eof:
                data = d.unused_data + data
                d = None
    except zlib.error as exc:
        reason = f"the compressed file is not valid gzip data ({exc})"
        raise GateError(Exit.FAILED, reason) from None


def _tail_gz(fd: int, n: int, out: Output) -> None:
    room_lines = out.max_lines - out.lines
    budget = out.max_bytes - out.bytes
    n_eff = min(n, room_lines)
    if n_eff <= 0 or budget <= 0:
        for piece in gunzip_chunks(fd):
            if piece:
                raise limit_reached(out, "max_lines" if n_eff <= 0 else "max_bytes")
        return
    # Blocks of complete lines, oldest first; trimmed so they hold no more than the
    # last n_eff lines plus one block, and no more than `budget` plus one block.
    blocks: collections.deque[tuple[bytes, int]] = collections.deque()
    held_lines = 0
    held_bytes = 0
    dropped = 0  # lines seen that are no longer held
    partial = b""
    overlong = False  # the current partial line is already longer than the budget
    for piece in gunzip_chunks(fd):
        cut = piece.rfind(b"\n") + 1
        if cut == 0:
            if not overlong:
                partial += piece
                if len(partial) > budget:
                    overlong, partial = True, b""
            continue
        if overlong:
            # That line can never be sent, and nothing before it can be either.
            dropped += held_lines + 1
            blocks.clear()
            held_lines = held_bytes = 0
            overlong = False
            block = piece[piece.find(b"\n") + 1 : cut]
        else:
            block = partial + piece[:cut] if partial else piece[:cut]
        tail_piece = piece[cut:]
        partial = b""
        if len(tail_piece) > budget:
            overlong = True
        else:
            partial = tail_piece
        if block:
            k = block.count(b"\n")
            blocks.append((block, k))
            held_lines += k
            held_bytes += len(block)
            while len(blocks) > 1:
                first, fk = blocks[0]
                if held_lines - fk >= n_eff or held_bytes - len(first) >= budget:
                    blocks.popleft()
                    held_lines -= fk
                    held_bytes -= len(first)
                    dropped += fk
                else:
                    break
    if overlong:
        # The last line is longer than the byte cap: nothing fits.
        raise limit_reached(out, "max_bytes")
    data = b"".join([*(b for b, _ in blocks), partial])
    blocks.clear()
    start, count = _tail_start(lambda ln, off: data[off : off + ln], len(data), n_eff, budget)
    _write_lines(data, start, out)
    if count < n and (start > 0 or dropped > 0):
        raise limit_reached(out, "max_lines" if count == room_lines else "max_bytes")


def _write_lines(data: bytes, start: int, out: Output) -> None:
    """Send `data[start:]` in writes of about `CHUNK` bytes, each cut after a newline."""
    pos = start
    end = len(data)
    while pos < end:
        stop = pos + CHUNK
        if stop >= end:
            stop = end
        else:
            nl = data.rfind(b"\n", pos, stop)
            if nl < 0:
                nl = data.find(b"\n", stop)
            stop = end if nl < 0 else nl + 1
        out.write(data[pos:stop])
        pos = stop


class _Follower:
    """One file being followed: its fd, read offset and the partial last line."""

    def __init__(self, fd: int, out: Output, deadline: float, deadline_reason: str) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.offset = 0
        self.partial = b""
        self.out = out
        self.deadline = deadline
        self.deadline_reason = deadline_reason

    def mark(self, gap: str = "") -> None:
        """Tell the output where the complete lines sent so far end."""
        self.out.mark(self.ident[1], self.offset - len(self.partial), gap)

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise LimitReached(self.deadline_reason)

    def start(self, n: int) -> None:
        """Send the last `n` complete lines; a partial last line waits for its newline."""
        size = os.fstat(self.fd).st_size
        complete_end = size
        look = min(size, _FIRST_BLOCK)
        while look:
            buf = os.pread(self.fd, look, size - look)
            if len(buf) != look:
                complete_end = 0  # truncated as we start: follow from the top
                break
            nl = buf.rfind(b"\n")
            if nl >= 0:
                complete_end = size - len(buf) + nl + 1
                break
            if look >= min(size, LINE_CAP):
                if size <= LINE_CAP:
                    complete_end = 0  # one partial line: it is all still to come
                # else: a partial line longer than LINE_CAP; its rest goes out as a piece
                break
            look = min(size, LINE_CAP)
        if n > 0 and complete_end > 0:
            for _attempt in range(3):
                try:
                    _tail_plain(self.fd, complete_end, n, self.out)
                except _Shrunk:
                    complete_end = 0  # truncated before we started: follow from the top
                    continue
                break
        self.offset = complete_end

    def pump(self) -> int:
        """Read and send whatever was appended; returns how many bytes were read."""
        if os.fstat(self.fd).st_size < self.offset:
            # copytruncate: the file was emptied; what it held up to `offset` was sent.
            self.flush()
            self.offset = 0
            self.mark()
        total = 0
        while True:
            data = os.pread(self.fd, CHUNK, self.offset)
            if not data:
                break
            self.offset += len(data)
            total += len(data)
            self._feed(data)
            self.mark()
            if len(data) < CHUNK:
                break
            self.check_deadline()  # a writer faster than us must not keep us here forever
        return total

    def _feed(self, data: bytes) -> None:
        buf = self.partial + data if self.partial else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            self.out.write(buf[:cut])
        rest = buf[cut:]
        while len(rest) > LINE_CAP:
            self.out.write(rest[:LINE_CAP] + b"\n")
            rest = rest[LINE_CAP:]
        self.partial = rest

    def flush(self) -> None:
        """Send a held partial line (with a newline) before its file goes away."""
        if self.partial:
            data, self.partial = self.partial, b""
            self.out.write(data + b"\n")


def follow(
    fd: int,
    reopen: Callable[[], int | None],
    n: int,
    out: Output,
    *,
    deadline: float,
    deadline_reason: str,
    interval: float = 0.2,
    start: tuple[int, int] | None = None,
    find: Callable[[int], int | None] | None = None,
) -> None:
    """`tail -F`: the last `n` complete lines, then each complete line as it is appended.

    Ownership: `follow` takes `fd` and every fd `reopen()` returns, and closes all of
    them before it returns or raises. It only ends by an exception: `LimitReached`
    (`deadline_reason` at `deadline`, or a cap), `Cancelled`, or whatever `reopen` raises.
    The first `n` lines obey the caps as in `tail` (newest lines that fit, then the cap).

    Rotation. Each `interval`, `reopen()` gives a fresh fd for the path (`None` while the
    path is missing: we keep reading the fd we have). A different (st_dev, st_ino) means
    the file was renamed away: we keep reading the old fd until one whole interval
    passes with nothing new in it (at most `SWITCH_GRACE` seconds), because with
    logrotate's `create` the app keeps appending to the old file until postrotate makes
    it reopen; then we flush the old file's partial last line, close it, and read the new
    file from offset 0. Nothing is lost or repeated unless the app writes to the old file
    again after leaving it idle for a whole interval (or past the grace).

    copytruncate: a file smaller than our offset was truncated; we restart at offset 0.
    Inherent races: lines appended after our last read and before the truncate are in the
    copy only and never reach us; and if the new content has already grown past our old
    offset when we look, the truncation goes unnoticed and we resume mid-file. Polling
    every `interval` keeps both windows small; rename+create has neither. (The writer
    must use O_APPEND, as copytruncate itself requires, or it leaves a sparse file.)

    Only complete lines are sent; a partial last line is held (at most `LINE_CAP`:
    longer "lines" go out in pieces, each with a newline added) and is flushed with a
    newline appended when its file is truncated or left behind.

    Continuing (`start` = (inode, offset), `n` ignored): where an earlier read or follow
    ended. The same inode at the path: from that offset (past its end: the file was
    truncated, so from 0, with a gap). Another inode: `find(inode)` looks for the old
    file among the rotated names; found, it is read from the offset to its end and then
    left as in a rotation; not found (compressed or deleted), the current file is read
    from 0 and the output is told of the gap. Each position reached goes to
    `out.mark` (and again every `MARK_EVERY` seconds while idle).
    """
    try:
        current = _Follower(fd, out, deadline, deadline_reason)
    except BaseException:
        os.close(fd)
        raise
    candidate: int | None = None  # a new file at the path, waiting for the old to go quiet
    candidate_since = 0.0
    try:
        if start is None:
            current.start(n)
            current.mark()
        else:
            candidate, current = _continue(current, start, find)
            candidate_since = time.monotonic()
        while True:
            got = current.pump()
            if candidate is not None:
                if got == 0 or time.monotonic() - candidate_since >= SWITCH_GRACE:
                    current.flush()
                    old = current
                    current = _Follower(candidate, out, deadline, deadline_reason)
                    candidate = None
                    os.close(old.fd)
                    current.mark()
                    current.pump()
            else:
                new = reopen()
                if new is not None:
                    candidate, candidate_since = new, time.monotonic()
                    st = os.fstat(new)
                    if (st.st_dev, st.st_ino) == current.ident:
                        candidate = None
                        os.close(new)
            if out.wants_marks and time.monotonic() - out.marked_at >= MARK_EVERY:
                current.mark()  # nothing new: still alive, still here
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LimitReached(deadline_reason)
            out.sleep(min(interval, remaining))
    finally:
        if candidate is not None:
            os.close(candidate)
        os.close(current.fd)


def _continue(
    current: _Follower, start: tuple[int, int], find: Callable[[int], int | None] | None
) -> tuple[int | None, _Follower]:
    """Set up a follow that continues at `start`; returns (file to switch to, follower)."""
    ino, off = start
    size = os.fstat(current.fd).st_size
    if current.ident[1] == ino:
        if off <= size:
            current.offset = off
            current.mark()
        else:
            current.mark(
                f"the file was truncated below offset {off} (copytruncate): lines written "
                "between then and the truncation were not kept; continuing from its start"
            )
        return None, current
    old = find(ino) if find is not None else None
    if old is None:
        current.mark(
            f"the file being read (inode {ino}, offset {off}) was rotated away and is no "
            "longer readable (compressed or deleted): what it got after that offset is not "
            "shown; continuing from the start of the current file"
        )
        return None, current
    # The old file is still there under a rotated name: finish it, then switch.
    try:
        prev = _Follower(old, current.out, current.deadline, current.deadline_reason)
        prev.offset = min(off, os.fstat(old).st_size)
        prev.mark()
    except BaseException:
        os.close(old)
        raise
    return current.fd, prev
