"""The `range` verb: the lines of a log between two timestamps, found by binary search.

`range --since TIME [--until TIME] [-m N] PATH` replaces the original article's
`grep '2024-12-17 14:'`: instead of reading the whole file it bisects on byte offsets
with `os.pread`, so a window of a multi-GiB log costs a few dozen small reads.

Line timestamps (the format is detected from the first `DETECT_BYTES` of the file):

* `2024-12-17 14:03:05` and ISO 8601 `2024-12-17T14:03:05`, optionally preceded by `[`,
  with an optional `.123` / `,123` fraction. A zone suffix (`Z`, `+09:00`) is ignored:
  the wall-clock digits are compared as written, because a log is written in one zone
  and `--since` is typed in the zone of that log.
* syslog `Dec 17 14:03:05` (day may be space-padded). It has no year, so only
  month/day/time are compared; a file that spans New Year is out of order for us.

A line that does not start with a timestamp (stack trace, continuation) belongs to the
timestamped line before it, and is in the window iff that line is; lines before the
first timestamped line of the file belong to no line and are never in a window.
Timestamps are assumed non-decreasing. If they are not, the search still ends and
prints some contiguous run of lines, just not a well-defined one. A probe that lands
in a long run of lines without timestamps reads forward to the next timestamped line,
so such runs (megabytes of one stack trace) cost their length, not a few KiB.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator

from .errors import Exit, GateError
from .output import Output
from .readers import LINE_CAP, emit_span, gunzip_chunks, tag_at
from .stamps import SYSLOG as _SYSLOG
from .stamps import YMD as _YMD
from .stamps import Format as _Format

__all__ = ["DETECT_BYTES", "TimeKey", "parse_time_arg", "read_range"]

DETECT_BYTES = 1 << 16  # the format must show up in the first 64 KiB
_LINEAR = 1 << 12  # below this span, scan instead of bisecting (parsing heads is slow)
_HEAD = 64  # bytes of a line that hold its timestamp
FIRST_BLOCK = 4096  # a probe's first read; must be >= _HEAD
_MAX_BLOCK = 1 << 20

_Key = tuple[int, ...]
_Pread = Callable[[int, int], bytes]


class TimeKey:
    """An instant as written in a log (no zone): `--since`/`--until` after parsing."""

    __slots__ = ("parts",)

    def __init__(
        self,
        year: int,
        month: int,
        day: int,
        hour: int = 0,
        minute: int = 0,
        second: int = 0,
        nanosecond: int = 0,
    ) -> None:
        self.parts: tuple[int, int, int, int, int, int, int] = (
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanosecond,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimeKey) and self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __lt__(self, other: TimeKey) -> bool:
        return self.parts < other.parts

    def __le__(self, other: TimeKey) -> bool:
        return self.parts <= other.parts

    def __gt__(self, other: TimeKey) -> bool:
        return self.parts > other.parts

    def __ge__(self, other: TimeKey) -> bool:
        return self.parts >= other.parts

    def __str__(self) -> str:
        y, mo, d, h, mi, s, ns = self.parts
        text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
        return f"{text}.{ns:09d}".rstrip("0") if ns else text

    def __repr__(self) -> str:
        return f"TimeKey({', '.join(map(str, self.parts))})"


_ACCEPTED = (
    "TIME must be YYYY-MM-DD, optionally followed by a space or T and HH, HH:MM, "
    "HH:MM:SS or HH:MM:SS.fff"
)
_ARG = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?)?)?"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_time_arg(text: str) -> TimeKey:
    """`--since`/`--until` value -> the earliest instant it names (`2024-12-17 14` is 14:00:00).

    Only this fixed set of prefixes is accepted, so nothing locale- or parser-dependent
    decides what a user's text means.
    """
    m = _ARG.fullmatch(text)
    if m is None:
        raise GateError(Exit.BAD_REQUEST, _ACCEPTED)
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour, minute, second = (int(g) if g else 0 for g in (m[4], m[5], m[6]))
    frac = m[7] or ""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if (
        not 1 <= month <= 12
        or not 1 <= day <= (_DAYS[month - 1] if month != 2 or leap else 28)
        or hour > 23
        or minute > 59
        or second > 60  # a leap second can appear in a log
    ):
        raise GateError(Exit.BAD_REQUEST, f"TIME is not a valid date and time; {_ACCEPTED}")
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return TimeKey(year, month, day, hour, minute, second, nanos)


_NO_TIMESTAMPS = (
    "the file has no timestamps range understands: its lines must begin with "
    "YYYY-MM-DD HH:MM:SS, YYYY-MM-DDTHH:MM:SS (ISO 8601) or syslog's Mon DD HH:MM:SS"
)


def _detect(head: bytes) -> _Format:
    """The format of the first line in `head` that starts with a timestamp we know."""
    pos = 0
    while pos < len(head):
        for fmt in (_YMD, _SYSLOG):
            if fmt.match(head, pos):
                return fmt
        nl = head.find(b"\n", pos)
        if nl < 0:
            break
        pos = nl + 1
    raise GateError(Exit.BAD_REQUEST, _NO_TIMESTAMPS)


def _scan(
    pread: _Pread, x: int, end: int, fmt: _Format, target: _Key | None
) -> tuple[int, _Key] | None:
    """The first line starting in `[x, end)` with a timestamp `>= target` (or any
    timestamp, if `target` is None): `(offset, key)`, or None.

    Only line heads are matched; the rest of each line is skipped with `find`.
    """
    block = FIRST_BLOCK
    pos = x - 1 if x > 0 else 0  # file offset of buf[0]
    buf = b""
    i = 0
    at_start = x == 0
    while True:
        if not at_start:
            nl = buf.find(b"\n", i)
            if nl < 0:
                pos += len(buf)
                i = 0
                if pos >= end:
                    return None
                buf = pread(min(block, end - pos), pos)
                block = min(block * 2, _MAX_BLOCK)
                if not buf:
                    return None
                continue
            i = nl + 1
            at_start = True
        if pos + i >= end:
            return None
        if len(buf) - i < _HEAD and pos + len(buf) < end:
            pos += i
            i = 0
            buf = pread(min(block, end - pos), pos)
            block = min(block * 2, _MAX_BLOCK)
            if not buf:
                return None
        m = fmt.match(buf, i)
        if m is not None:
            key = fmt.key(m)
            if target is None or key >= target:
                return pos + i, key
        at_start = False


def _search(pread: _Pread, size: int, fmt: _Format, target: _Key, lo: int) -> int:
    """Offset of the first timestamped line at or after `lo` with key >= target (`size`
    if none), by bisection on byte offsets.

    Invariant: every timestamped line starting before `lo` is earlier than `target`.
    Each step either lowers `hi` below its old value or raises `lo` past `mid`, so it
    ends even when the timestamps are out of order.
    """
    hi = size
    while hi - lo > _LINEAR:
        mid = (lo + hi) // 2
        hit = _scan(pread, mid, size, fmt, None)
        if hit is None or hit[1] >= target:
            hi = mid
        else:
            lo = hit[0] + 1
    hit = _scan(pread, lo, size, fmt, target)
    return size if hit is None else hit[0]


def read_range(
    fd: int,
    since: TimeKey,
    until: TimeKey | None,
    out: Output,
    *,
    max_lines: int | None = None,
    gz: bool = False,
) -> None:
    """Send the lines from the first one stamped `>= since` up to (not including) the
    first one from there on stamped `>= until`, continuation lines included.

    The fd stays open (the caller owns it). Plain files are bisected, so the cost is a
    few reads per probe plus the window itself. `gz=True` cannot seek (gzip has no
    index): it decompresses from the start and stops at the end of the window.
    `max_lines` stops quietly after that many lines; the policy caps still raise
    `LimitReached`. An empty file prints nothing; a file whose first `DETECT_BYTES`
    show no known timestamp is a bad request.
    """
    if gz:
        _range_gz(fd, since, until, out, max_lines)
        return
    st = os.fstat(fd)
    size = st.st_size
    if size == 0:
        if until is None:
            out.position = (st.st_ino, 0, 0)
        return

    def pread(length: int, offset: int) -> bytes:
        out.check_time()  # a probe in a long run without timestamps reads all of it
        return os.pread(fd, length, offset)

    fmt = _detect(pread(min(size, DETECT_BYTES), 0))
    start = _search(pread, size, fmt, fmt.target(since.parts), 0)
    end = size if until is None else _search(pread, size, fmt, fmt.target(until.parts), start)
    sent = 0
    if end > start and (max_lines is None or max_lines > 0):
        sent = emit_span(fd, start, end, out, max_lines)
    if until is None and (max_lines is None or sent < max_lines):
        # "since T" read to the end: a follow can go on from exactly here.
        out.position = (st.st_ino, end, tag_at(fd, end))


def _range_gz(
    fd: int, since: TimeKey, until: TimeKey | None, out: Output, max_lines: int | None
) -> None:
    """Sequential `range` over decompressed blocks of whole lines."""
    if max_lines is not None and max_lines <= 0:
        return
    blocks = _gz_blocks(fd, out.check_time)
    head: list[bytes] = []
    size = 0
    for block in blocks:
        head.append(block)
        size += len(block)
        if size >= DETECT_BYTES:
            break
    if not head:
        return
    fmt = _detect(b"".join(head)[:DETECT_BYTES])
    lo: _Key | None = fmt.target(since.parts)  # None once the window has started
    hi = None if until is None else fmt.target(until.parts)
    left = max_lines
    for block in itertools.chain(head, blocks):

        def pread(length: int, offset: int, block: bytes = block) -> bytes:
            return block[offset : offset + length]

        start = 0
        if lo is not None:
            hit = _scan(pread, 0, len(block), fmt, lo)
            if hit is None:
                continue
            start = hit[0]
            lo = None
        stop = len(block)
        if hi is not None:
            hit = _scan(pread, start, len(block), fmt, hi)
            if hit is not None:
                stop = hit[0]
        data = block[start:stop]
        if left is not None:
            lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            if lines >= left:
                pos = 0
                for _ in range(left):
                    pos = data.find(b"\n", pos) + 1 or len(data)
                out.write(data[:pos])
                return
            left -= lines
        out.write(data)
        if stop < len(block):
            return


def _gz_blocks(fd: int, tick: Callable[[], None]) -> Iterator[bytes]:
    """Decompressed data as blocks of whole lines (a missing final newline stays
    missing). A line longer than `LINE_CAP` becomes pieces, each given a newline, so
    memory stays bounded; the pieces after the first count as continuation lines."""
    carry = b""
    for piece in gunzip_chunks(fd, tick=tick):
        buf = carry + piece if carry else piece
        cut = buf.rfind(b"\n") + 1
        carry = buf[cut:]
        if cut:
            yield buf[:cut]
        while len(carry) > LINE_CAP:
            yield carry[:LINE_CAP] + b"\n"
            carry = carry[LINE_CAP:]
    if carry:
        yield carry
