"""Line timestamps: the formats `range` bisects on, and one instant per line for the
web's merged view (shared with the web side, so there is one parser of log times).

* `2024-12-17 14:03:05` and ISO 8601 `2024-12-17T14:03:05`, optionally preceded by `[`,
  with an optional `.123` / `,123` fraction. This also covers journalctl's `short-iso`
  and `docker logs -t` (RFC 3339) lines.
* syslog `Dec 17 14:03:05` (day may be space-padded), which has no year.

`range` compares the digits as written (a log is written in one zone, and `--since` is
typed in it). Merging several logs needs one time line, so `instant` also reads a zone
suffix (`Z`, `+09:00`, `+0900`) when there is one and takes a time without a zone as
UTC; a syslog time gets the latest year that does not put it more than a day ahead of
`now`. A structured line that does not start with a time has it in a field: JSON
`"ts"`, `"time"`, `"timestamp"`, `"@timestamp"` or `"t"` (a time as above, or epoch
seconds / milliseconds as pino and zap write them), or logfmt `ts=`, `time=`, `t=`.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable

__all__ = ["SYSLOG", "YMD", "Format", "LineKey", "instant"]

LineKey = tuple[int, ...]


def _nanos(frac: bytes | None) -> int:
    if not frac:
        return 0
    return int(frac[:9].ljust(9, b"0"))


class Format:
    """A line-timestamp format: how to recognise it and what to compare."""

    def __init__(
        self,
        pattern: bytes,
        key: Callable[[re.Match[bytes]], LineKey],
        target: Callable[[tuple[int, ...]], LineKey],
    ) -> None:
        self.match = re.compile(pattern).match
        self.key = key
        self.target = target  # the part of a full (y, mo, d, h, mi, s, ns) it compares


def _ymd_key(m: re.Match[bytes]) -> LineKey:
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), _nanos(m[7]))


_MONTHS = {
    name: i for i, name in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}


def _syslog_key(m: re.Match[bytes]) -> LineKey:
    return (_MONTHS[m[1]], int(m[2]), int(m[3]), int(m[4]), int(m[5]), _nanos(m[6]))


YMD = Format(
    rb"\[?([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?",
    _ymd_key,
    lambda parts: parts,
)
SYSLOG = Format(
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ 0-9][0-9]) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?",
    _syslog_key,
    lambda parts: parts[1:],
)
_ZONE = re.compile(rb" ?(?:(Z)|([+-])([0-9]{2}):?([0-9]{2})?)(?![0-9])")
_ZONE_START = frozenset(b"Z+- ")
_TIME_KEYS = rb"(?:@timestamp|timestamp|time|ts|t)"
_JSON_TIME = re.compile(
    rb'"' + _TIME_KEYS + rb'" ?: ?(?:"([0-9][^"]{9,39})"|([0-9]{9,13})(?:\.([0-9]{1,9}))?)'
)
_LOGFMT_TIME = re.compile(
    rb"(?:^| )" + _TIME_KEYS + rb'=(?:"([0-9][^"]{9,39})"|([0-9][^ "]{9,39}))(?= |$)'
)
_DAY_NS = 86_400 * 10**9


_MIDNIGHTS: dict[bytes, int | None] = {}  # b"2024-12-17" -> its first second, a small cache


def _midnight(ymd: bytes) -> int | None:
    at = _MIDNIGHTS.get(ymd, -1)
    if at == -1:
        try:
            at = calendar.timegm((int(ymd[:4]), int(ymd[5:7]), int(ymd[8:10]), 0, 0, 0, 0, 0, 0))
        except (ValueError, OverflowError):  # pragma: no cover - timegm is lenient
            at = None
        if len(_MIDNIGHTS) > 4096:
            _MIDNIGHTS.clear()
        _MIDNIGHTS[ymd] = at
    return at


def instant(line: bytes, now_ns: int | None = None) -> int | None:
    """Nanoseconds since the epoch (UTC) of the timestamp `line` starts with, or None
    when it starts with none (a continuation line: it belongs to the line before)."""
    m = YMD.match(line)
    if m is not None:
        day = _midnight(line[m.start(1) : m.end(3)])
        if day is None:
            return None
        secs = day + int(m[4]) * 3600 + int(m[5]) * 60 + int(m[6])
        at = secs * 10**9 + _nanos(m[7])
        end = m.end()
        if end < len(line) and line[end] in _ZONE_START:
            z = _ZONE.match(line, end)
            if z is not None and z[1] is None:
                offset = (int(z[3]) * 60 + int(z[4] or 0)) * 60 * 10**9
                at = at - offset if z[2] == b"+" else at + offset
        return at
    m = SYSLOG.match(line)
    if m is None:
        return _field(line, now_ns)
    mo, d, h, mi, s, ns = _syslog_key(m)
    now_ns = time.time_ns() if now_ns is None else now_ns
    year = time.gmtime(now_ns // 10**9).tm_year
    at = _syslog_ns(year, mo, d, h, mi, s, ns)
    if at > now_ns + _DAY_NS:  # December's lines read in January
        at = _syslog_ns(year - 1, mo, d, h, mi, s, ns)
    return at


def _syslog_ns(year: int, mo: int, d: int, h: int, mi: int, s: int, ns: int) -> int:
    return calendar.timegm((year, mo, d, h, mi, s, 0, 0, 0)) * 10**9 + ns


def _field(line: bytes, now_ns: int | None) -> int | None:
    """The time in a JSON or logfmt line's time field (see the module's docstring)."""
    if line[:1] == b"{":
        m = _JSON_TIME.search(line)
        if m is None:
            return None
        if m[1] is not None:
            return instant(m[1], now_ns) if YMD.match(m[1]) else None
        whole, frac = int(m[2]), (m[3] or b"").ljust(9, b"0")
        if whole >= 10**11:  # milliseconds (pino), else seconds (zap, logrus)
            return whole * 10**6 + int(frac[:6]) // 1000
        return whole * 10**9 + int(frac)
    if b"=" not in line:
        return None
    m = _LOGFMT_TIME.search(line)
    if m is None:
        return None
    value = m[1] or m[2]
    return instant(value, now_ns) if YMD.match(value) else None
