"""Scrolling back through a merged view: the page of merged lines just older than the
ones on screen.

    GET /api/merged/history?src=HOST:PATH&at=INO:OFF:FILE&src=...&at=...&lines=N

One `at` per `src`, in the same order: where the shown lines of that source begin
(`INO:OFF`, a merged tail's `start` or a previous page's `at`) in FILE, the source's
path or one of its rotated files. Each source gives the N lines before its `at` (the
gate's `tail --before`, history.py; at a file's start the end of the next older rotated
file), and the N newest lines of all of them together are the page, merged by time
(merge.py). That is exactly the next page: no source can have more than N lines in it,
and each gave N. A source's new `at` is where its lines in the page begin, so its
lines that did not fit are read again for the next page (nothing is kept between
requests). Only files page back: units and containers are not asked (the page says so).
Audited like a merged tail: one `merged_history` record, one `history` read per source.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .access import TAIL, Source
from .api import Lines, json_bytes, off_loop
from .context import Ctx, Server
from .guard import server_of
from .history import line_start, older_file, same_log
from .merge import merge
from .merged import Pick, SrcQ, fail_picks, pick
from .workers import ReadSpec, WorkerError

router = APIRouter(prefix="/api/merged", tags=["merged view"])

AtQ = Annotated[
    list[str],
    Query(description="INODE:OFFSET:FILE, one per src: where its shown lines begin"),
]


@dataclass(slots=True)
class Cursor:
    """Where one source's shown lines begin."""

    ino: int
    off: int
    file: str


@dataclass(slots=True)
class Chunk:
    """What one source gave for this page: its lines, the file and offset they begin
    at, and the older file it moved to (None: the same file; "": there is none)."""

    lines: list[str]
    data: bytes = b""
    file: str = ""
    ino: int = 0
    begin: int = 0
    older: str | None = None
    error: str = ""


def _cursors(picks: list[Pick], at: list[str]) -> list[Cursor]:
    """The `at` values, checked: ValueError names what is wrong."""
    if len(at) != len(picks):
        raise ValueError(f"at: give one INODE:OFFSET:FILE per src ({len(picks)}), not {len(at)}")
    out = []
    for p, a in zip(picks, at, strict=True):
        ino, off, file = [*a.split(":", 2), "", ""][:3]
        if not (ino.isdigit() and off.isdigit() and len(ino) <= 20 and len(off) <= 20):
            raise ValueError(f"at: {a[:80]!r} is not INODE:OFFSET:FILE")
        if p.source.kind != "file":
            raise ValueError(f"at: only files page back ({p.label})")
        if not same_log(p.source.name, file):
            raise ValueError(
                f"at: {file[:80]!r} is not {p.source.name} or one of its rotated files"
            )
        out.append(Cursor(int(ino), int(off), file))
    return out


def _refusal(ctx: Ctx, p: Pick, file: str) -> str | None:
    """Why the user may not read `file` (a rotated file of `p`'s path), or None: each
    file paged through needs its own `tail` grant, as in the single viewer."""
    assert ctx.access is not None
    if file == p.source.name:
        return None
    decision = ctx.access.check(p.host, Source("file", file), TAIL)
    return None if decision.allowed else decision.reason


async def _chunk(server: Server, ctx: Ctx, p: Pick, at: Cursor, lines: int) -> Chunk:
    """The `lines` lines of source `p` before `at` (moving to its older file at a
    file's start). Ends the source's audit record."""
    assert p.ref is not None
    via = {"user": ctx.name, "audit": p.ref.seq}
    file, older = at.file, None
    before: tuple[int, int] | None = (at.ino, at.off)
    try:
        if at.off == 0:  # the start of a file: the next older file's end
            listing = await server.workers.sources(p.host, via)
            older = older_file(at.file, listing["files"]) or ""
            if not older:
                server.finish(p.ref, "read_end", {"file": at.file, "older": None, "lines": 0})
                return Chunk([], older="")
            file, before = older, None
        why = _refusal(ctx, p, file)
        if why is not None:
            server.finish(p.ref, "read_end", {"file": file, "refused": why, "lines": 0})
            return Chunk([], error=f"{file}: {why}")
        spec = ReadSpec("tail", Source("file", file), lines=lines, before=before)
        data, outcome = await server.workers.read(p.host, spec, via)
    except WorkerError as exc:
        server.finish(p.ref, "read_end", {"status": exc.status, "error": exc.detail})
        return Chunk([], error=exc.reason)
    rows = data.decode("utf-8", "replace").split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    extra: dict[str, Any] = {"file": file, "lines": len(rows), "bytes": len(data)}
    server.finish(p.ref, "read_end", {**outcome.as_audit(), **extra})
    if outcome.pos is None:  # cannot say where the next page begins: this source ends
        return Chunk([], error=f"{file}: no position to page back from")
    return Chunk(rows, data, file, outcome.pos[0], outcome.pos[1] - len(data), older)


def _page(picks: list[Pick], at: list[Cursor], chunks: list[Chunk], lines: int) -> dict[str, Any]:
    """The merged page and each source's next `at` (CPU: run off the loop when large)."""
    merged = merge([c.lines for c in chunks], limit=lines, keep="last")
    shown = [0] * len(chunks)
    for i in merged.src:
        shown[i] += 1
    sources = []
    for i, (p, c) in enumerate(zip(picks, chunks, strict=True)):
        out: dict[str, Any] = {"label": p.label}
        if c.error:
            out["error"] = c.error
        if shown[i]:  # its lines begin inside what it gave
            off = c.begin + line_start(c.data, len(c.lines) - shown[i])
            out["at"] = f"{c.ino}:{off}:{c.file}"
            out["older"] = c.older  # crossed into an older file: a marker after its lines
        elif not c.lines:  # nothing older (or it cannot go on): this source is done,
            # unless it moved to an empty older file: on from that one's start
            out["at"] = f"{c.ino}:0:{c.file}" if c.older else None
        else:  # nothing of it fits on this page: it stays where it was
            out["at"] = f"{at[i].ino}:{at[i].off}:{at[i].file}"
        sources.append(out)
    return {"lines": merged.lines, "src": merged.src, "sources": sources}


@router.get("/history", summary="the merged page before the lines shown, paging back")
async def merged_history(request: Request, src: SrcQ, at: AtQ, lines: Lines = 200) -> Response:
    """`sources[i].at` is the next page's `at` for `src[i]` (null: nothing older);
    `sources[i].older` names the older file it moved to within this page."""
    server = server_of(request)
    started = time.monotonic()
    params: dict[str, Any] = {"lines": lines, "at": at[:16]}
    ctx, parent, picks = pick(
        server, request, action="history", specs=src, capability=TAIL, params=params
    )
    try:
        cursors = _cursors(picks, at)
    except ValueError as exc:
        raise fail_picks(server, parent, picks, 422, str(exc)) from None
    chunks = await asyncio.gather(
        *(_chunk(server, ctx, p, c, lines) for p, c in zip(picks, cursors, strict=True))
    )
    size = sum(len(c.data) for c in chunks)
    page = await off_loop(size, functools.partial(_page, picks, cursors, list(chunks), lines))
    page["audit"] = parent.seq
    body = await off_loop(size, json_bytes, page)
    server.finish(
        parent,
        "read_end",
        {
            "lines": len(page["lines"]),
            "bytes": len(body),
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
        },
    )
    server.metrics.sent("merged_history", len(body), len(page["lines"]))
    return Response(body, media_type="application/json")
