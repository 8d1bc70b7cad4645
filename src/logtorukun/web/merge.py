"""Several sources' lines interleaved by time, in one list: the core of the merged view
(merged.py) and of the cross-host search's "merged by time".

Each source's lines are grouped into records: a line that starts with a timestamp
(gate/stamps.py, the same formats `range` reads, zones honoured, a time without a zone
taken as UTC; in a JSON or logfmt line, its time field) and the lines after it that do
not (a stack trace, a wrapped message), so a continuation line always stays right after
its predecessor. Lines before a source's first timestamp go just before that first
timestamped line. The records of all sources
are then merged with `heapq.merge`: a stable k-way merge, so each source keeps its own
order even where its timestamps go backwards, and equal times keep the sources' order.
A source without any timestamp the merge understands comes first, whole, and is named
in `undated`. Pure CPU work: callers with many lines run it off the event loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..gate.stamps import instant

__all__ = ["FIELD_CHARS", "HEAD_CHARS", "MAX_SOURCES", "Merged", "host_source", "merge"]

MAX_SOURCES = 8  # sources in one merged view, tail, search or follow
HEAD_CHARS = 64  # a timestamp is looked for in a line's first characters only
FIELD_CHARS = 2048  # ... or, in a JSON or logfmt line, in its time field this far in
UNDATED = -1  # the key of a source with no timestamp at all: before everything


def host_source(spec: str) -> tuple[str, str]:
    """`HOST:SOURCE` (how the merged view and `logtorukun merge` name a source) ->
    (host, source); a ValueError that shows the form if `spec` is not one."""
    host, sep, key = spec.partition(":")
    if not sep or not host or not key:
        raise ValueError(
            f"{spec[:100]!r} is not HOST:SOURCE (web1:/var/log/app.log, "
            "web1:unit:nginx.service, web1:container:api)"
        )
    return host, key


@dataclass(frozen=True, slots=True)
class Merged:
    """The merged lines, and for each the index of the source it came from."""

    lines: list[str]
    src: list[int]
    undated: list[int]  # sources without a timestamp the merge understands
    cut: int  # lines left out to keep within `limit`


# (time, source, first line, line after the last): one record of one source
_Record = tuple[int, int, int, int]


def _records(i: int, lines: Sequence[str], now_ns: int) -> list[_Record]:
    """The records of source `i`, in its order."""
    starts: list[tuple[int, int]] = []
    for j, line in enumerate(lines):
        head = line[:HEAD_CHARS]
        if head[:1] == "{" or "=" in head:  # JSON or logfmt: the time may be in any field
            head = line[:FIELD_CHARS]
        at = instant(head.encode("utf-8", "replace"), now_ns)
        if at is not None:
            starts.append((j, at))
    if not starts:
        return [(UNDATED, i, 0, len(lines))] if lines else []
    starts[0] = (0, starts[0][1])  # the lines before the first timestamp go with it
    ends = [j for j, _ in starts[1:]] + [len(lines)]
    return [(at, i, j, stop) for (j, at), stop in zip(starts, ends, strict=True)]


def merge(
    per_source: Sequence[Sequence[str]],
    *,
    limit: int | None = None,
    keep: Literal["last", "first"] = "last",
    now_ns: int | None = None,
) -> Merged:
    """Interleave `per_source` (each in its own order, oldest first) by time. With
    `limit`, the last (a tail) or first (a search, like grep -m) `limit` lines are kept."""
    now = time.time_ns() if now_ns is None else now_ns
    runs: list[list[_Record]] = []
    undated: list[int] = []
    for i, lines in enumerate(per_source):
        records = _records(i, lines, now)
        runs.append(records)
        if records and records[0][0] == UNDATED:
            undated.append(i)
    out_lines: list[str] = []
    out_src: list[int] = []
    for _, i, j, stop in heapq.merge(*runs):
        out_lines.extend(per_source[i][j:stop])
        out_src.extend([i] * (stop - j))
    cut = 0
    if limit is not None and len(out_lines) > limit:
        cut = len(out_lines) - limit
        if keep == "last":
            out_lines, out_src = out_lines[cut:], out_src[cut:]
        else:
            out_lines, out_src = out_lines[:limit], out_src[:limit]
    return Merged(out_lines, out_src, undated, cut)
