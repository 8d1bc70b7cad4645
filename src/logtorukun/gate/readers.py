"""Read a log file from an already-open descriptor: tail from the end, whole lines forward.

Every reader takes a read-only fd of a regular file that the caller opened safely
(`paths.py`); nothing here opens a path. Reads use `os.pread` with our own offsets, so
the fd's file position is never used or changed. All output goes through `Output`,
which enforces the policy caps (raising `LimitReached`) and notices a client that has
gone (raising `Cancelled`); both propagate to the caller untouched.

Line protocol: `Output.write` gets whole lines. Where a reader has to cut a line it
cannot hold (longer than `LINE_CAP` in `follow.py` and in the gz scan of `range`), each
piece is sent with a newline appended, so the stream stays line-structured.
"""

from __future__ import annotations

import os

from .errors import Exit, GateError
from .output import LimitReached, Output

TYPE_CHECKING = False  # collections.abc and typing cost start-up; only the checker needs them
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

CHUNK = 1 << 20  # forward reads and writes: large, so throughput is not per-line
LINE_CAP = 1 << 20  # a partial line held longer than this goes out in pieces
FIRST_BLOCK = 1 << 14  # backward scan: 16 KiB covers `tail -n 200` of typical logs
# Reads of a tail's answer (at most max_bytes): a bridge runs up to 64 of them at once,
# and each one waiting for the client to read holds one such piece (one DATA frame).
TAIL_CHUNK = 1 << 16
_MAX_BLOCK = 1 << 20
_GZ_INPUT = 1 << 18

__all__ = [
    "CHUNK",
    "LINE_CAP",
    "TAIL_CHUNK",
    "LineBuffer",
    "copy_lines",
    "emit_span",
    "gunzip_chunks",
    "limit_reached",
    "tail",
]


TAG_BYTES = 64


def tag_at(fd: int, off: int) -> int:
    """CRC32 of the (up to) 64 bytes before `off`: a position names a file by inode, and
    an inode is reused once its file is deleted; the tag tells the two files apart."""
    import zlib  # imported when first needed, like the gz path: no start-up cost

    n = min(TAG_BYTES, off)
    return zlib.crc32(os.pread(fd, n, off - n)) if n > 0 else 0


def limit_reached(out: Output, which: str) -> LimitReached:
    """The same error `Output.write` raises, for readers that stop *before* a cap.

    `tail` sends the newest lines that fit rather than letting `Output` cut the oldest
    ones, so it has to report the truncation itself; `which` is "max_lines" or "max_bytes".
    """
    out.truncated = True
    if which == "max_lines":
        return LimitReached(f"output truncated at {out.max_lines} lines (max_lines in the policy)")
    return LimitReached(f"output truncated at {out.max_bytes} bytes (max_bytes in the policy)")


class LineBuffer:
    """The unfinished last line of a stream, held as its pieces: appending a chunk never
    copies what is held (no quadratic cost for a line of many chunks), and `size` lets
    the caller refuse to hold a line that could never be sent."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines that `chunk` finishes (held part first); keeps the rest."""
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            if chunk:
                self.pieces.append(chunk)
                self.size += len(chunk)
            return b""
        done = b"".join([*self.pieces, chunk[:cut]]) if self.pieces else chunk[:cut]
        rest = chunk[cut:]
        self.pieces = [rest] if rest else []
        self.size = len(rest)
        return done

    def take(self) -> bytes:
        """What is held (a last line without a newline), emptying the buffer."""
        data = b"".join(self.pieces)
        self.pieces, self.size = [], 0
        return data


class Shrunk(Exception):
    """The file got shorter under a read (copytruncate); the caller starts over."""


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise Shrunk()
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
    block = FIRST_BLOCK
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


def emit_span(
    fd: int,
    start: int,
    end: int,
    out: Output,
    max_lines: int | None = None,
    chunk_size: int = CHUNK,
) -> int:
    """Send `[start, end)` (which begins at a line start) as whole lines, in large writes.

    Returns how many lines were sent; stops quietly after `max_lines`. A line that could
    never fit the byte cap is not buffered past it: the cap is reported at once.
    """
    sent = 0
    pos = start
    held = LineBuffer()
    # With a line limit, start small and grow: `-m 200` should not read a whole MiB.
    size = chunk_size if max_lines is None else min(FIRST_BLOCK * 4, chunk_size)
    while pos < end:
        out.check_time()
        want = min(size, end - pos)
        size = min(size * 2, chunk_size)
        data = os.pread(fd, want, pos)
        if len(data) < want:
            end = pos + len(data)  # the file shrank under us: send what there is
        pos += len(data)
        chunk = held.feed(data)
        del data  # only `chunk` is held while a bridge stream waits for room to send it
        if pos >= end:
            chunk += held.take()
        if not chunk:
            if held.size > out.max_bytes - out.bytes:
                raise limit_reached(out, "max_bytes")
            continue
        nls = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        if max_lines is not None and sent + nls >= max_lines:
            out.write(first_lines(chunk, max_lines - sent))
            return max_lines
        sent += nls
        out.write(chunk)
    return sent


def copy_lines(fd: int, out: Output, n: int | None, *, gz: bool) -> None:
    """`head -n N` / `cat`: from the start, whole lines, until N lines or the caps.

    Memory is one read plus the unfinished line, and that line is never held past what
    the byte cap still allows: a line that could not be sent ends the request at once.
    """
    if n is None and not gz:
        _send_whole_lines(fd, out)
    # Large reads: in a bridge they become whole 64 KiB frames and few small remainders.
    plain = iter(lambda: os.read(fd, CHUNK), b"")
    chunks = gunzip_chunks(fd, tick=out.check_time) if gz else plain
    left = n
    held = LineBuffer()
    for chunk in chunks:
        out.check_time()
        data = held.feed(chunk)
        if left is not None and data:
            data = first_lines(data, left)
            left -= data.count(b"\n")
            out.write(data)
            if left <= 0:
                return
        elif data:
            out.write_bulk(data)
        if held.size > out.max_bytes - out.bytes:
            raise limit_reached(out, "max_bytes")
    if held.size and (left is None or left > 0):
        out.write(held.take())


def _send_whole_lines(fd: int, out: Output) -> None:
    """`cat` of a plain file: the complete lines there are now go without counting them
    (by sendfile to a one-shot's stdout: no copy through Python) once no cap can bind on
    them; the fd's position is left after what was sent, for whatever follows.

    A line has at least one byte, so the line cap cannot bind on the bytes left once the
    lines still allowed are at least that many: lines are counted from the start only
    until then (a file of 10^9 bytes under `max_lines = 10^9 - 10^7` counts about its
    first 10^7 bytes' worth of lines, then sends the rest uncounted)."""
    size = os.fstat(fd).st_size
    look = min(size, 1 << 16)
    nl = os.pread(fd, look, size - look).rfind(b"\n") if look else -1
    end = size - look + nl + 1
    if nl < 0 or out.max_bytes - out.bytes < end:
        return  # no whole line, or the byte cap can bind: the counting loop does it all
    pos = 0
    while out.max_lines - out.lines - out.uncounted < end - pos:
        out.check_time()
        piece = os.pread(fd, min(CHUNK, end - pos), pos)
        cut = piece.rfind(b"\n") + 1
        if not cut:
            break  # a line longer than CHUNK (or a shorter file): the loop holds lines
        out.write(piece if cut == len(piece) else piece[:cut])
        pos += cut
    else:
        before = out.bytes
        out.send_file(fd, pos, end - pos)
        pos += out.bytes - before
    os.lseek(fd, pos, os.SEEK_SET)


def first_lines(data: bytes, k: int) -> bytes:
    """The first `k` lines of `data` (all of it if it has fewer)."""
    pos = 0
    for _ in range(k):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return data
        pos = nl + 1
    return data[:pos]


def tail_plain(fd: int, end: int, n: int, out: Output) -> None:
    """The last `n` lines of `[0, end)`: the newest lines that fit the caps, then the cap
    is reported if that was fewer than the file has."""
    room_lines = out.max_lines - out.lines
    room_bytes = out.max_bytes - out.bytes
    n_eff = min(n, room_lines)
    start, count = _tail_start(lambda ln, off: _pread_exact(fd, ln, off), end, n_eff, room_bytes)
    emit_span(fd, start, end, out, chunk_size=TAIL_CHUNK)
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
                tail_plain(fd, end, n, out)
            finally:
                out.position = (st.st_ino, end, tag_at(fd, end))  # a follow continues here
        except Shrunk:
            continue  # copytruncate while we were scanning: look again at the new size
        return
    raise GateError(Exit.FAILED, "the file kept shrinking while it was being read")


def tail_before(fd: int, off: int, n: int, out: Output, *, gz: bool = False) -> None:
    """The last `n` lines that end at `off` (a line start: where the page after them
    begins), for paging back through a file; offsets of a .gz are in its decompressed
    data. Sends `[start, off)` exactly, so the caller knows the page starts at
    `off - bytes sent`."""
    if n <= 0:
        return
    if gz:
        _tail_gz(fd, n, out, stop=off)
        return
    st = os.fstat(fd)
    if off > st.st_size:
        raise GateError(Exit.BAD_REQUEST, f"--before {off} is past the end ({st.st_size} bytes)")
    try:
        tail_plain(fd, off, n, out)
    except Shrunk:
        raise GateError(Exit.FAILED, "the file was truncated while it was being read") from None
    out.position = (st.st_ino, off, tag_at(fd, off))


def gunzip_chunks(
    fd: int, chunk: int = 0, tick: Callable[[], None] | None = None
) -> Iterator[bytes]:
    """Decompressed data of a gzip file, at most `chunk` (default `CHUNK`) bytes at a time,
    so memory stays bounded even for a decompression bomb. Gives exactly what `gzip -dc`
    gives: every member of a multi-member file, and nothing after bytes that do not start
    a member (padding, garbage: gzip ignores those too); corrupt or truncated data raises
    `GateError(FAILED)`. `tick` is called before each piece (the request's clock)."""
    import zlib  # only the gz path pays for it

    chunk = chunk or CHUNK
    offset = 0
    data = b""
    members = 0
    pending = False  # the last call hit the output limit: zlib may hold more output
    d: zlib._Decompress | None = None  # None: between members
    try:
        while True:
            if not data:
                data = os.pread(fd, _GZ_INPUT, offset)
                offset += len(data)
                if not data:
                    if d is None:
                        return
                    if not pending:
                        raise GateError(Exit.FAILED, "the compressed file is truncated")
            if d is None:
                if len(data) < 2:  # a member boundary right at the end of a read
                    more = os.pread(fd, _GZ_INPUT, offset)
                    offset += len(more)
                    data += more
                if members and not data.startswith(b"\x1f\x8b"):
                    # gzip -d stops here too: "decompression OK, trailing garbage
                    # ignored" (NUL padding included), and prints nothing after it.
                    return
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if tick is not None:
                tick()
            piece = d.decompress(data, chunk)
            pending = len(piece) == chunk
            if d.eof:
                # At the end of a member the input left over is in unused_data (and, when
                # the output limit was hit in the same call, in unconsumed_tail too: using
                # both repeated the next member).
                data = d.unused_data
                d = None
                members += 1
            else:
                data = d.unconsumed_tail
            if piece:
                yield piece
    except zlib.error as exc:
        reason = f"the compressed file is not valid gzip data ({exc})"
        raise GateError(Exit.FAILED, reason) from None


def _upto(pieces: Iterator[bytes], stop: int, seen: list[int]) -> Iterator[bytes]:
    """The decompressed stream up to offset `stop`; `seen[0]` counts what went by."""
    for piece in pieces:
        if seen[0] + len(piece) >= stop:
            piece = piece[: stop - seen[0]]
            seen[0] += len(piece)
            yield piece
            return
        seen[0] += len(piece)
        yield piece


def _tail_gz(fd: int, n: int, out: Output, stop: int | None = None) -> None:
    """`stop`: only the decompressed bytes before that offset (a page of history)."""
    seen = [0]
    source = _upto(gunzip_chunks(fd, tick=out.check_time), 1 << 62 if stop is None else stop, seen)
    try:
        _tail_gz_lines(source, n, out)
    finally:
        out.position = (os.fstat(fd).st_ino, seen[0], 0)  # offsets in the decompressed data


def _tail_gz_lines(source: Iterator[bytes], n: int, out: Output) -> None:
    room_lines = out.max_lines - out.lines
    budget = out.max_bytes - out.bytes
    n_eff = min(n, room_lines)
    if n_eff <= 0 or budget <= 0:
        for piece in source:
            if piece:
                raise limit_reached(out, "max_lines" if n_eff <= 0 else "max_bytes")
        return
    # Blocks of complete lines, oldest first; trimmed so they hold no more than the
    # last n_eff lines plus one block, and no more than `budget` plus one block.
    from collections import deque  # only the gz path pays for it

    blocks: deque[tuple[bytes, int]] = deque()
    held_lines = 0
    held_bytes = 0
    dropped = 0  # lines seen that are no longer held
    held = LineBuffer()  # the partial last line
    overlong = False  # the current partial line is already longer than the budget
    for piece in source:
        cut = piece.rfind(b"\n") + 1
        if cut == 0:
            if not overlong:
                held.feed(piece)
                if held.size > budget:
                    overlong = True
                    held.take()
            continue
        if overlong:
            # That line can never be sent, and nothing before it can be either.
            dropped += held_lines + 1
            blocks.clear()
            held_lines = held_bytes = 0
            overlong = False
            block = piece[piece.find(b"\n") + 1 : cut]
        else:
            block = held.feed(piece[:cut])
        tail_piece = piece[cut:]
        if len(tail_piece) > budget:
            overlong = True
        else:
            held.feed(tail_piece)
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
    data = b"".join([*(b for b, _ in blocks), held.take()])
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
