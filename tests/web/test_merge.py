"""The merge core (web/merge.py): several sources interleaved by time, continuation lines
kept with their predecessor, each source's own order kept."""

from __future__ import annotations

from logtorukun.web.merge import merge


def test_three_sources_interleave_by_time_with_exact_sources() -> None:
    a = ["2024-01-01 00:00:01 a1", "2024-01-01 00:00:04 a2", "2024-01-01 00:00:07 a3"]
    b = ["2024-01-01 00:00:02 b1", "2024-01-01 00:00:05 b2"]
    c = ["2024-01-01T00:00:03Z c1", "2024-01-01T09:00:06+09:00 c2"]  # c2 is 00:00:06 UTC
    m = merge([a, b, c])
    assert m.lines == [a[0], b[0], c[0], a[1], b[1], c[1], a[2]]
    assert m.src == [0, 1, 2, 0, 1, 2, 0]
    assert m.undated == [] and m.cut == 0


def test_continuation_lines_stay_with_their_predecessor() -> None:
    a = ["2024-01-01 00:00:01 ERROR boom", "  at x()", "  at y()", "2024-01-01 00:00:09 ok"]
    b = ["2024-01-01 00:00:02 b1", "2024-01-01 00:00:03 b2"]
    m = merge([a, b])
    assert m.lines == [a[0], a[1], a[2], b[0], b[1], a[3]]
    assert m.src == [0, 0, 0, 1, 1, 0]


def test_lines_before_the_first_timestamp_go_just_before_it() -> None:
    a = ["  tail of an older record", "2024-01-01 00:00:05 a1"]
    b = ["2024-01-01 00:00:01 b1", "2024-01-01 00:00:09 b2"]
    m = merge([a, b])
    assert m.lines == [b[0], a[0], a[1], b[1]]


def test_a_source_keeps_its_order_even_when_its_times_go_backwards() -> None:
    a = ["2024-01-01 00:00:05 a1", "2024-01-01 00:00:01 a2"]
    b = ["2024-01-01 00:00:03 b1"]
    m = merge([a, b])
    assert [x for x, s in zip(m.lines, m.src, strict=True) if s == 0] == a
    assert sorted(m.lines) == sorted(a + b)


def test_equal_times_keep_the_sources_order() -> None:
    m = merge([["2024-01-01 00:00:01 a"], ["2024-01-01 00:00:01 b"]])
    assert m.src == [0, 1]


def test_an_undated_source_comes_first_and_is_named() -> None:
    m = merge([["2024-01-01 00:00:01 a"], ["no time here", "nor here"], []])
    assert m.lines == ["no time here", "nor here", "2024-01-01 00:00:01 a"]
    assert m.undated == [1]


def test_limit_keeps_the_last_for_a_tail_and_the_first_for_a_search() -> None:
    a = [f"2024-01-01 00:00:{s:02d} a" for s in range(0, 20, 2)]
    b = [f"2024-01-01 00:00:{s:02d} b" for s in range(1, 20, 2)]
    last = merge([a, b], limit=3)
    assert last.lines == ["2024-01-01 00:00:17 b", "2024-01-01 00:00:18 a", "2024-01-01 00:00:19 b"]
    assert last.cut == 17
    first = merge([a, b], limit=3, keep="first")
    assert first.lines == [
        "2024-01-01 00:00:00 a",
        "2024-01-01 00:00:01 b",
        "2024-01-01 00:00:02 a",
    ]
    assert first.src == [0, 1, 0]


def test_json_lines_merge_by_their_time_field() -> None:
    a = ['{"ts":"2024-01-01T00:00:01Z","msg":"a1"}', '{"msg":"a2","time":1704067203000}']
    b = ["2024-01-01 00:00:02 b1", "level=info ts=2024-01-01T00:00:04Z msg=b2"]
    assert merge([a, b]).src == [0, 1, 0, 1]
