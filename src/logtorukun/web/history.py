"""Scrolling back through a log's history, a page at a time (Cockpit-style).

`GET /api/hosts/{host}/history?path=P&before=INO:OFF&lines=N` gives the N lines that end
at OFF of the file (inode INO) that was at P (`tail -n N --before`, which finds the file
under its rotated name if it has moved), and `start`, where those lines begin: the
`before` of the next page back. At the start of a file (`before=INO:0`) the next page is
the end of the next older file of the same log: the files next to P whose names are P's
own with a rotation suffix (`app.log.1`, `app.log.2.gz`, `app.log-20241217.gz`), newest
first by modification time. Each page is a read like any other: the `tail` grant on
the file it comes from, and its own audit record.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .access import TAIL
from .api import Lines, PathQ, json_bytes, worker_failed
from .context import ApiError
from .guard import Allowed, begin, server_of, via
from .workers import ReadSpec, WorkerError

router = APIRouter(prefix="/api", tags=["api"])

BeforeQ = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,20}:[0-9]{1,20}$", description="INODE:OFFSET: a page's `start`"),
]
_ROTATED = re.compile(r"(?:[.-][0-9]{1,14})?(?:\.gz)?")


def same_log(path: str, other: str) -> bool:
    """Whether `other` is `path` or one of its rotated files (`app.log.1`, `.2.gz`, ...)."""
    directory, name = posixpath.split(path)
    base = re.sub(r"(?:[.-][0-9]{1,14})?(?:\.gz)?$", "", name)
    other_dir, other_name = posixpath.split(other)
    return (
        other_dir == directory
        and other_name.startswith(base)
        and _ROTATED.fullmatch(other_name[len(base) :]) is not None
    )


def older_file(path: str, files: list[dict[str, Any]]) -> str | None:
    """The next older file of the same log as `path` among the worker's `sources` files."""
    family = [f for f in files if same_log(path, f["path"])]
    family.sort(key=lambda f: (-float(f.get("mtime", 0)), f["path"]))
    names = [f["path"] for f in family]
    if path not in names:
        return None
    i = names.index(path)
    return names[i + 1] if i + 1 < len(names) else None


def line_start(data: bytes, skip: int) -> int:
    """The offset in `data` of its line number `skip` (from 0): the bytes of the lines
    before it, each with its newline (lines are counted as `split_lines` counts them)."""
    at = 0
    for _ in range(skip):
        nl = data.find(b"\n", at)
        if nl < 0:
            return len(data)
        at = nl + 1
    return at


@router.get("/hosts/{host}/history", summary="a page of a file's history, paging back")
async def history(
    request: Request,
    host: str,
    path: PathQ = None,
    before: BeforeQ = None,
    lines: Lines = 200,
) -> Response:
    """Without `before`: the last `lines` of `path`. With it: the lines before that
    position; `start` is the next page's `before`; at a file's start, `path` and
    `start` move to the next older rotated file (`path` null: nothing older)."""
    server = server_of(request)
    if path is None:
        raise ApiError(422, "path: give the file to page through")
    target = path
    at = None
    if before is not None:
        ino, off = (int(x) for x in before.split(":"))
        at = (ino, off)

    def begin_page(file: str, before: str | None) -> Allowed:
        """The audited start of one request to the worker for this page."""
        return begin(
            server,
            request,
            action="history",
            host=host,
            capability=TAIL,
            params={"before": before, "lines": lines},
            source={"path": file, "unit": None, "container": None},
        )

    if at is not None and at[1] == 0:  # the start of a file: the older file's end
        a0 = begin_page(path, before)
        try:
            listing = await server.workers.sources(a0.host, via(a0))
        except WorkerError as exc:
            server.finish(a0.ref, "read_end", {"status": exc.status, "error": exc.detail})
            raise worker_failed(exc, a0.ref.seq) from None
        older = older_file(path, listing["files"])
        server.finish(a0.ref, "read_end", {"older": older, "lines": 0, "bytes": 0})
        if older is None:
            return _reply({"host": host, "path": None, "lines": [], "start": None})
        target, at = older, None
    a = begin_page(target, f"{at[0]}:{at[1]}" if at else None)
    assert a.source is not None
    spec = ReadSpec("tail", a.source, lines=lines, before=at)
    try:
        data, outcome = await server.workers.read(a.host, spec, via(a))
    except WorkerError as exc:
        server.finish(a.ref, "read_end", {"status": exc.status, "error": exc.detail})
        raise worker_failed(exc, a.ref.seq) from None
    text = data.decode("utf-8", "replace")
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    start = None
    if outcome.pos is not None:
        start = f"{outcome.pos[0]}:{outcome.pos[1] - len(data)}"
    server.finish(a.ref, "read_end", {**outcome.as_audit(), "lines": len(rows), "bytes": len(data)})
    server.metrics.sent("history", len(data), len(rows))
    return _reply(
        {
            "host": host,
            "path": target,
            "lines": rows,
            "start": start,
            "truncated": outcome.truncated,
            "audit": a.ref.seq,
        }
    )


def _reply(payload: dict[str, Any]) -> Response:
    return Response(json_bytes(payload), media_type="application/json")
