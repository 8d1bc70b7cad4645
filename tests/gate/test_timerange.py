"""The `range` verb: TIME arguments, format detection, bisection vs a linear model."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logtorukun.gate import readers, timerange
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.output import LimitReached, Output
from logtorukun.gate.timerange import TimeKey, parse_time_arg, read_range
from tests.gate.conftest import PreadCounter

BIG = 10**12


def run_range(
    path: Path,
    since: str,
    until: str | None = None,
    *,
    gz: bool = False,
    max_lines: int | None = None,
    out: Output | None = None,
) -> bytes:
    sink: list[bytes] = []
    if out is None:
        out = Output(sink.append, max_lines=BIG, max_bytes=BIG)
    fd = os.open(path, os.O_RDONLY)
    try:
        read_range(
            fd,
            parse_time_arg(since),
            None if until is None else parse_time_arg(until),
            out,
            max_lines=max_lines,
            gz=gz,
        )
    finally:
        os.close(fd)
    return b"".join(sink)


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------- TIME arguments


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("2024-12-17", (2024, 12, 17, 0, 0, 0, 0)),
        ("2024-12-17 14", (2024, 12, 17, 14, 0, 0, 0)),
        ("2024-12-17T14", (2024, 12, 17, 14, 0, 0, 0)),
        ("2024-12-17 14:03", (2024, 12, 17, 14, 3, 0, 0)),
        ("2024-12-17T14:03:05", (2024, 12, 17, 14, 3, 5, 0)),
        ("2024-12-17 14:03:05.5", (2024, 12, 17, 14, 3, 5, 500_000_000)),
        ("2024-12-17 14:03:05,123", (2024, 12, 17, 14, 3, 5, 123_000_000)),
        ("2024-12-17 14:03:05.123456789", (2024, 12, 17, 14, 3, 5, 123_456_789)),
        ("2024-02-29", (2024, 2, 29, 0, 0, 0, 0)),
        ("2000-02-29 23:59:60", (2000, 2, 29, 23, 59, 60, 0)),
    ],
)
def test_parse_time_arg(text: str, parts: tuple[int, ...]) -> None:
    assert parse_time_arg(text).parts == parts


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024",
        "2024-12",
        "2024-12-1",
        "2024-12-17 1",
        "2024-12-17 14:3",
        "2024-12-17 14:03:5",
        "2024-12-17T",
        "2024-12-17 ",
        "2024-12-17  14",
        "2024-12-17 14:03:05.",
        "2024-12-17 14:03:05.1234567890",
        "2024-12-17 14:03:05Z",
        "2024-12-17T14:03:05+09:00",
        "2024-12-17\n",
        "2024-12-17\n14",
        " 2024-12-17",
        "2024/12/17",
        "17-12-2024",
        "yesterday",
        "-1h",
        "\uff12\uff10\uff12\uff14-12-17",  # fullwidth digits: \d would take them
        "2024-12-\u0661\u0667",  # Arabic-Indic digits
        "2024-13-01",
        "2024-00-10",
        "2024-12-00",
        "2024-12-32",
        "2023-02-29",
        "1900-02-29",
        "2024-04-31",
        "2024-12-17 24",
        "2024-12-17 14:60",
        "2024-12-17 14:03:61",
        "'; cat /etc/passwd; echo '",
    ],
)
def test_parse_time_arg_rejects(text: str) -> None:
    with pytest.raises(GateError) as ei:
        parse_time_arg(text)
    assert ei.value.code == Exit.BAD_REQUEST
    assert "YYYY-MM-DD" in ei.value.reason and "\n" not in ei.value.reason


def test_timekey_order() -> None:
    a, b = parse_time_arg("2024-12-17 14"), parse_time_arg("2024-12-17 14:00:00.000000001")
    assert a < b and a <= b and b > a and b >= a and a != b
    assert a == TimeKey(2024, 12, 17, 14) and hash(a) == hash(TimeKey(2024, 12, 17, 14))
    assert str(b) == "2024-12-17 14:00:00.000000001" and str(a) == "2024-12-17 14:00:00"


# ---------------------------------------------------------------- formats and windows

ISO = b"""\
2024-12-17T13:59:59.999+09:00 INFO before
2024-12-17T14:00:00Z INFO first of 14
Traceback (most recent call last):
  File "x.py", line 1
2024-12-17T14:03:05.123456 ERROR middle
2024-12-17T14:59:59.9 INFO last of 14
2024-12-17T15:00:00 INFO first of 15
    continuation of 15
2024-12-17T16:30:00 INFO end"""

SPACE = b"""\
2024-12-17 13:59:59,999 INFO before
2024-12-17 14:00:00,000 INFO first of 14
Traceback (most recent call last):
  File "x.py", line 1
2024-12-17 14:03:05.123 ERROR middle
2024-12-17 14:59:59 INFO last of 14
2024-12-17 15:00:00,000 INFO first of 15
    continuation of 15
[2024-12-17 16:30:00] INFO end
"""

SYSLOG = b"""\
Dec 17 13:59:59 host app[1]: before
Dec 17 14:00:00 host app[1]: first of 14
 continuation
 more
Dec 17 14:03:05 host app[1]: middle
Dec 17 14:59:59 host app[1]: last of 14
Dec 17 15:00:00 host app[1]: first of 15
    continuation of 15
Dec 17 16:30:00 host app[1]: end
"""


def lines(data: bytes, a: int, b: int | None = None) -> bytes:
    parts = data.splitlines(keepends=True)
    return b"".join(parts[a:b])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("data", [ISO, SPACE, SYSLOG], ids=["iso", "space", "syslog"])
def test_range_hour_14(tmp_path: Path, data: bytes, gz: bool) -> None:
    p = write(tmp_path / "app.log", data, gz)
    # docs/gate.md's `grep '2024-12-17 14:'`, continuation lines included.
    assert run_range(p, "2024-12-17 14", "2024-12-17 15", gz=gz) == lines(data, 1, 6)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("data", [ISO, SPACE, SYSLOG], ids=["iso", "space", "syslog"])
def test_range_windows(tmp_path: Path, data: bytes, gz: bool) -> None:
    p = write(tmp_path / "app.log", data, gz)

    def r(since: str, until: str | None = None, max_lines: int | None = None) -> bytes:
        return run_range(p, since, until, gz=gz, max_lines=max_lines)

    assert r("2024-01-01") == data  # window at the start: everything
    assert r("2024-12-17 16:00") == lines(data, 8)  # at the end, to EOF
    assert r("2024-12-17 14:03:05") == lines(data, 4)
    assert r("2024-12-17 14:03:05.2") == lines(data, 5)
    assert r("2024-12-17 15", "2024-12-17 16") == lines(data, 6, 8)  # with its continuation
    assert r("2024-12-17 14:30", "2024-12-17 14:40") == b""  # nothing in between
    assert r("2024-12-17 17") == b""  # after the end
    assert r("2024-12-17 15", "2024-12-17 14") == b""  # until before since
    assert r("2024-12-17 14", "2024-12-17 14") == b""  # until is exclusive
    assert r("2024-12-17 14", max_lines=3) == lines(data, 1, 4)
    assert r("2024-12-17 14", max_lines=0) == b""
    assert r("2024-12-17 14", "2024-12-17 15", max_lines=100) == lines(data, 1, 6)


@pytest.mark.parametrize("gz", [False, True])
def test_range_leading_orphans_and_no_final_newline(tmp_path: Path, gz: bool) -> None:
    data = b"header without a time\n  more\n" + ISO
    p = write(tmp_path / "app.log", data, gz)
    assert run_range(p, "2000-01-01", gz=gz) == ISO  # orphans belong to no line
    assert run_range(p, "2024-12-17 16:30", gz=gz).endswith(b"INFO end")


@pytest.mark.parametrize("gz", [False, True])
def test_range_no_timestamps(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "app.log", b"just text\nno times here\n2024-12-17\n" * 10, gz)
    with pytest.raises(GateError) as ei:
        run_range(p, "2024-12-17", gz=gz)
    assert ei.value.code == Exit.BAD_REQUEST
    assert "has no timestamps range understands" in ei.value.reason


@pytest.mark.parametrize("gz", [False, True])
def test_range_empty_file(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "app.log", b"", gz)
    assert run_range(p, "2024-12-17", gz=gz) == b""


@pytest.mark.parametrize("gz", [False, True])
def test_range_caps(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "app.log", SPACE, gz)
    sink: list[bytes] = []
    out = Output(sink.append, max_lines=3, max_bytes=BIG)
    with pytest.raises(LimitReached):
        run_range(p, "2024-12-17 14", out=out, gz=gz)
    assert out.truncated and out.lines == 3
    assert b"".join(sink) == lines(SPACE, 1, 4)


def test_range_syslog_space_padded_day(tmp_path: Path) -> None:
    data = b"Dec  7 23:59:59 a\nDec  8 00:00:00 b\nDec 10 01:00:00 c\n"
    p = write(tmp_path / "syslog", data, False)
    # No year in syslog: only month/day/time are compared.
    assert run_range(p, "1999-12-08", "1999-12-10 01") == b"Dec  8 00:00:00 b\n"


def test_range_reads_little_of_a_big_file(tmp_path: Path, pread_bytes: PreadCounter) -> None:
    p = tmp_path / "big.log"
    # 24 hours at 5 lines a second: 432000 lines, ~30 MB.
    with p.open("wb") as f:
        for h in range(24):
            f.write(
                b"".join(
                    b"2024-12-17 %02d:%02d:%02d.%03d INFO request served in 12 ms\n"
                    % (h, s // 60, s % 60, ms)
                    for s in range(3600)
                    for ms in range(0, 1000, 200)
                )
            )
    size = p.stat().st_size
    got = run_range(p, "2024-12-17 14:03:05", "2024-12-17 14:03:07")
    assert got.count(b"\n") == 10
    assert got.startswith(b"2024-12-17 14:03:05.000 ") and b"14:03:06.800" in got
    assert pread_bytes.total < 2 * 1024 * 1024 and pread_bytes.total < size / 10
    p.unlink()  # do not leave 30 MB in pytest's kept temp dirs


# ---------------------------------------------------------------- bisection vs a model

DAY_MS = 86_400_000


def key_of_ms(ms: int) -> TimeKey:
    s, frac = divmod(ms, 1000)
    return TimeKey(2024, 12, 17, s // 3600, s // 60 % 60, s % 60, frac * 1_000_000)


def render(ms: int, style: int) -> bytes:
    s, frac = divmod(ms, 1000)
    hms = b"%02d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)
    if style == 0:
        return b"2024-12-17T" + hms + b".%03dZ" % frac
    if style == 1:
        return b"2024-12-17 " + hms + b",%03d" % frac
    return b"Dec 17 " + hms + b".%03d" % frac


CONT = [
    b"",
    b"  at x.y(Z.java:1)",
    b"Caused by: boom",
    b"\t...",
    b"12:00:00 not a stamp",
    b"x2024-12-17T00:00:00Z inside a line is not a line's stamp",
    b"xDec 17 00:00:00 nor is this",
]


@st.composite
def logs(draw: st.DrawFn, sorted_times: bool = True) -> tuple[list[tuple[int | None, bytes]], int]:
    style = draw(st.integers(0, 2))
    times = draw(st.lists(st.integers(0, 2000), min_size=0, max_size=60))
    if sorted_times:
        times.sort()
    entries: list[tuple[int | None, bytes]] = []
    for _ in range(draw(st.integers(0, 2))):
        entries.append((None, draw(st.sampled_from(CONT))))
    for t in times:
        ms = t * 250
        entries.append((ms, render(ms, style) + b" msg %d" % t))
        for _ in range(draw(st.integers(0, 3))):
            entries.append((None, draw(st.sampled_from(CONT))))
    return entries, style


def model(
    entries: list[tuple[int | None, bytes]],
    since: int,
    until: int | None,
    final_newline: bool,
    max_lines: int | None,
) -> bytes:
    out: list[bytes] = []
    owner: int | None = None
    for i, (t, text) in enumerate(entries):
        if t is not None:
            owner = t
        nl = b"\n" if final_newline or i < len(entries) - 1 else b""
        if owner is not None and since <= owner and (until is None or owner < until):
            out.append(text + nl)
    return b"".join(out if max_lines is None else out[:max_lines])


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    log=logs(),
    since=st.tuples(st.integers(-1, 2002), st.sampled_from([-125, 0])).map(
        lambda td: max(0, td[0] * 250 + td[1])
    ),
    until=st.none()
    | st.tuples(st.integers(-1, 2002), st.sampled_from([0, 1])).map(
        lambda td: max(0, td[0] * 250 + td[1])
    ),
    final_newline=st.booleans(),
    max_lines=st.none() | st.integers(0, 20),
    linear=st.sampled_from([1, 40, 300, 1 << 16]),
    block=st.sampled_from([64, 100, 4096]),
    chunk=st.sampled_from([5, 64, 1 << 20]),
    gz=st.booleans(),
)
def test_range_matches_linear_model(
    tmp_path: Path,
    log: tuple[list[tuple[int | None, bytes]], int],
    since: int,
    until: int | None,
    final_newline: bool,
    max_lines: int | None,
    linear: int,
    block: int,
    chunk: int,
    gz: bool,
) -> None:
    entries, _style = log
    data = b"\n".join(text for _, text in entries)
    if final_newline and entries:
        data += b"\n"
    p = write(tmp_path / "app.log", data, gz)
    want = model(entries, since, until, final_newline, max_lines)
    sink: list[bytes] = []
    out = Output(sink.append, max_lines=BIG, max_bytes=BIG)
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(timerange, "_LINEAR", linear)  # force many bisection steps
            mp.setattr(timerange, "FIRST_BLOCK", block)
            mp.setattr(readers, "CHUNK", chunk)  # many blocks: the window spans them
            mp.setattr(readers, "_GZ_INPUT", chunk)
            try:
                read_range(
                    fd,
                    key_of_ms(since),
                    None if until is None else key_of_ms(until),
                    out,
                    max_lines=max_lines,
                    gz=gz,
                )
            except GateError as exc:
                assert all(t is None for t, _ in entries) and data
                assert "no timestamps" in exc.reason
                return
    finally:
        os.close(fd)
    assert b"".join(sink) == want


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    log=logs(sorted_times=False),
    since=st.integers(0, 500_000),
    until=st.none() | st.integers(0, 500_000),
    linear=st.sampled_from([1, 50]),
    gz=st.booleans(),
)
def test_range_unsorted_is_sane(
    tmp_path: Path,
    log: tuple[list[tuple[int | None, bytes]], int],
    since: int,
    until: int | None,
    linear: int,
    gz: bool,
) -> None:
    """Out-of-order timestamps: no crash, no loop, and a contiguous run of whole lines."""
    entries, _ = log
    if all(t is None for t, _ in entries):
        return
    data = b"".join(text + b"\n" for _, text in entries)
    p = write(tmp_path / "app.log", data, gz)
    sink: list[bytes] = []
    out = Output(sink.append, max_lines=BIG, max_bytes=BIG)
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(timerange, "_LINEAR", linear)
            read_range(
                fd, key_of_ms(since), None if until is None else key_of_ms(until), out, gz=gz
            )
    finally:
        os.close(fd)
    got = b"".join(sink)
    if got:
        assert got.endswith(b"\n")
        assert (b"\n" + data).find(b"\n" + got) >= 0


def test_a_range_without_until_reports_where_a_follow_continues(tmp_path: Path) -> None:
    import zlib

    from logtorukun.gate.output import Output
    from logtorukun.gate.timerange import parse_time_arg, read_range

    p = tmp_path / "app.log"
    p.write_bytes(b"2024-12-17 14:00:00 INFO a\n2024-12-17 15:00:00 INFO b\n")
    for until, max_lines, want in (
        (None, None, True),
        (None, 1, False),  # stopped at -m: the window goes on past what was sent
        ("2024-12-17 15", None, False),  # a window with an end: nothing to continue
    ):
        out = Output(lambda b: None, max_lines=100, max_bytes=10**6)
        fd = os.open(p, os.O_RDONLY)
        try:
            read_range(
                fd,
                parse_time_arg("2024-12-17 14"),
                None if until is None else parse_time_arg(until),
                out,
                max_lines=max_lines,
            )
        finally:
            os.close(fd)
        data = p.read_bytes()
        expected = (p.stat().st_ino, len(data), zlib.crc32(data[-64:]))
        assert (out.position == expected) is want, (until, max_lines, out.position)
