"""Line timestamps for the merged view: one instant per line, zones honoured."""

from __future__ import annotations

import calendar

from logtorukun.gate.stamps import instant


def _ns(y: int, mo: int, d: int, h: int, mi: int, s: int, ns: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 10**9 + ns


NOW = _ns(2026, 1, 5, 12, 0, 0)


def test_plain_iso_and_bracketed_times_are_utc() -> None:
    assert instant(b"2024-12-17 14:03:05 INFO x") == _ns(2024, 12, 17, 14, 3, 5)
    assert instant(b"2024-12-17T14:03:05.25 x") == _ns(2024, 12, 17, 14, 3, 5, 250_000_000)
    assert instant(b"[2024-12-17 14:03:05,5] x") == _ns(2024, 12, 17, 14, 3, 5, 500_000_000)


def test_zones_are_honoured() -> None:
    utc = _ns(2024, 12, 17, 5, 3, 5)
    assert instant(b"2024-12-17T14:03:05+09:00 x") == utc
    assert instant(b"2024-12-17T14:03:05+0900 host unit[1]: x") == utc  # journalctl short-iso
    assert instant(b"2024-12-17T05:03:05.000000000Z x") == utc  # docker logs -t
    assert instant(b"2024-12-17T00:03:05-05:00 x") == utc


def test_a_number_after_the_time_is_not_a_zone() -> None:
    assert instant(b"2024-12-17 14:03:05 -1 items") == _ns(2024, 12, 17, 14, 3, 5)


def test_syslog_gets_the_latest_year_not_in_the_future() -> None:
    assert instant(b"Jan  5 11:59:00 host x", NOW) == _ns(2026, 1, 5, 11, 59, 0)
    assert instant(b"Dec 31 23:00:00 host x", NOW) == _ns(2025, 12, 31, 23, 0, 0)


def test_lines_without_a_timestamp() -> None:
    assert instant(b"    at com.example.Main(Main.java:3)") is None
    assert instant(b"") is None
    assert instant(b"2024-12-17 no time") is None


def test_json_and_logfmt_time_fields() -> None:
    utc = _ns(2024, 12, 17, 5, 3, 5)
    assert instant(b'{"ts":"2024-12-17T05:03:05Z","level":"info"}') == utc
    assert instant(b'{"level":"info","msg":"x","@timestamp": "2024-12-17T14:03:05+09:00"}') == utc
    assert instant(b'{"level":30,"time":1734411785000,"msg":"pino"}') == utc  # milliseconds
    assert instant(b'{"level":"info","ts":1734411785.5,"msg":"zap"}') == utc + 500_000_000
    assert instant(b"level=info ts=2024-12-17T05:03:05Z msg=hi") == utc
    assert instant(b'time="2024-12-17 05:03:05" level=warn') == utc
    assert instant(b'{"level":"info","msg":"no time"}') is None
    assert instant(b'{"ts":"soon"}') is None
    assert instant(b"a=1 b=2 ts=notatime") is None
