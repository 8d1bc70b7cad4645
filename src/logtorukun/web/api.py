"""The JSON API under /api/ (OpenAPI at /openapi.json): the same data the pages show,
for scripts (`Authorization: Bearer TOKEN`).

Every handler takes the same path (guard.py): `begin` authenticates, rate-limits, resolves the
host and source, checks the grant and writes the audit record (allow or deny) before
the worker is asked anything; `end` writes the outcome. Status codes follow the
design: 403 refused (JSON reason), 404 unknown host or source, 422 bad parameters,
502 worker unreachable, 503 audit trail unwritable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .. import times
from ..audit import parse_time
from ..config import HostConfig
from ..gate.globs import Glob, GlobError, check_user_glob
from ..gate.vocabulary import MAX_PATH, MAX_PATTERN
from . import patterns
from .access import (
    DOWNLOAD,
    SEARCH,
    TAIL,
    BadSource,
    Source,
    source_from,
)
from .context import ApiError, Ctx, Server
from .guard import Allowed, begin, end, granted_host, has_control, server_of, via
from .merge import merge
from .patterns import BadPattern
from .workers import Outcome, ReadSpec, WorkerError

router = APIRouter(prefix="/api", tags=["api"])
log = logging.getLogger("logtorukun.web")

MAX_LINES = 10_000  # the web side caps again, whatever a worker's policy says
MAX_BYTES = 10_000_000
MAX_FILES_PER_HOST = 20  # a cross-host search reads at most this many files per host

Lines = Annotated[int, Query(ge=1, le=MAX_LINES, description="how many lines (last N)")]
PathQ = Annotated[str | None, Query(max_length=MAX_PATH, description="absolute file path")]
UnitQ = Annotated[str | None, Query(max_length=255, description="systemd unit")]
ContainerQ = Annotated[str | None, Query(max_length=128, description="container name")]
TimeQ = Annotated[str | None, Query(max_length=40, description="time: 2024-12-17 14:03")]


async def _worker_call(server: Server, a: Allowed, spec: ReadSpec) -> tuple[bytes, Outcome]:
    try:
        return await server.workers.read(a.host, spec, via(a))
    except WorkerError as exc:
        end(server, a, {"status": exc.status, "error": exc.detail, "bytes": 0, "lines": 0})
        raise worker_failed(exc, a.ref.seq) from None


def worker_failed(exc: WorkerError, ref: int) -> ApiError:
    """The client's error for a failed worker call; a hidden detail goes to the log."""
    if exc.detail != exc.reason:
        log.warning("audit ref %d: %s", ref, exc.detail)
    return ApiError(exc.status, exc.reason)


OFF_LOOP_BYTES = 64 * 1024  # above this, decoding and JSON encoding run in a thread
_T = TypeVar("_T")


async def off_loop(size: int, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)` in a worker thread when `size` says it may take over a millisecond:
    the event loop serves every other user meanwhile."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def _ndjson(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode()


def split_lines(data: bytes, limit: int) -> tuple[list[str], bool]:
    """Text lines (invalid UTF-8 replaced), at most `limit` (the last ones)."""
    if len(data) > MAX_BYTES:
        data = data[-MAX_BYTES:]
        data = data[data.find(b"\n") + 1 :]
        cut = True
    else:
        cut = False
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > limit:
        return lines[-limit:], True
    return lines, cut


async def _result(
    server: Server,
    a: Allowed,
    action: str,
    data: bytes,
    outcome: Outcome,
    limit: int,
    download: bool,
) -> Response:
    lines, cut = await off_loop(len(data), split_lines, data, limit)
    truncated = cut or outcome.truncated
    note = None
    if truncated:
        why = outcome.reason or f"capped at {limit} lines / {MAX_BYTES} bytes by the web server"
        note = f"output truncated: {why}"
    assert a.source is not None
    if download:
        body = ("\n".join(lines) + ("\n" if lines else "")).encode()
        end(
            server,
            a,
            {
                **outcome.as_audit(),
                "bytes": len(body),
                "lines": len(lines),
                "truncated": truncated,
                "download": True,
            },
        )
        server.metrics.sent("download", len(body), len(lines))
        base = re.sub(r"[^A-Za-z0-9._-]", "_", a.source.name.rsplit("/", 1)[-1])[:80]
        filename = f"{a.host.name}_{base}_{action}.log"
        return Response(
            body,
            media_type="text/plain; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )
    payload = {
        "host": a.host.name,
        "source": a.source.key,
        "kind": a.source.kind,
        "action": action,
        "lines": lines,
        "count": len(lines),
        "truncated": truncated,
        "note": note,
        "audit": a.ref.seq,
    }
    if outcome.pos is not None:
        # Where a follow continues without losing a line: /follow?from=INO:OFF:TAG
        payload["pos"] = ":".join(map(str, outcome.pos))
        if not cut:  # the lines are the file's bytes just before pos: where history goes on
            payload["start"] = f"{outcome.pos[0]}:{outcome.pos[1] - len(data)}"
    body = await off_loop(len(data), json_bytes, payload)
    end(
        server,
        a,
        {**outcome.as_audit(), "bytes": len(body), "lines": len(lines), "truncated": truncated},
    )
    server.metrics.sent(action, len(body), len(lines))
    return Response(body, media_type="application/json")


# ---------------------------------------------------------------------- who am I


@router.get("/me", summary="the signed-in user, roles and capabilities")
async def me(request: Request) -> dict[str, Any]:
    server = server_of(request)
    ctx = server.require_user(request, "me")
    assert ctx.user is not None and ctx.access is not None
    return {
        "user": ctx.user.name,
        "roles": list(ctx.user.roles),
        "capabilities": sorted(ctx.access.capabilities),
        "auth": ctx.via,
        "csrf": ctx.csrf,
    }


# ---------------------------------------------------------------------- hosts


@router.get("/hosts", summary="hosts you may read, with reachability")
async def hosts(request: Request, probe: bool = False) -> dict[str, Any]:
    """Only hosts some role of yours grants; `probe=true` connects to check reachability."""
    server = server_of(request)
    ctx = server.require_user(request, "hosts")
    assert ctx.access is not None
    visible = ctx.access.hosts()
    server.record(
        ctx,
        "read",
        action="hosts",
        params={"probe": probe, "count": len(visible)},
        decision="allow",
        reason="host list filtered by grants",
    )
    if probe and visible:
        await asyncio.gather(*(server.workers.probe(h) for h in visible))
    out = []
    for h in visible:
        state = server.workers.state.get(h.name)
        out.append(
            {
                "name": h.name,
                "labels": list(h.labels),
                "capabilities": sorted(ctx.access.host_caps(h)),
                "up": state.up if state else None,
                "error": state.error if state else "",
                "checked": state.checked if state else 0,
            }
        )
    return {"hosts": out}


@router.get("/hosts/{host}/sources", summary="files, units and containers you may read")
async def sources(request: Request, host: str) -> dict[str, Any]:
    server = server_of(request)
    ctx = server.require_user(request, "sources", host=host)
    assert ctx.access is not None
    hc = granted_host(server, ctx, host, "sources")
    ref = server.record(
        ctx,
        "read",
        action="sources",
        host=host,
        decision="allow",
        reason="listing filtered by grants",
    )
    started = time.monotonic()
    try:
        doc = await server.workers.sources(hc, {"user": ctx.name, "audit": ref.seq})
    except WorkerError as exc:
        server.finish(ref, "read_end", {"status": exc.status, "error": exc.detail})
        raise worker_failed(exc, ref.seq) from None
    files: list[dict[str, Any]] = []
    units: list[dict[str, Any]] = []
    containers: list[dict[str, Any]] = []
    for f in doc.get("files", []):
        path = f.get("path")
        if not isinstance(path, str):
            continue
        try:
            src = source_from(path=path)
        except BadSource:
            continue
        caps = ctx.access.source_caps(hc, src)
        if caps:
            files.append({**f, "capabilities": sorted(caps)})
    for kind, names, dest in (
        ("unit", doc.get("units", []), units),
        ("container", doc.get("containers", []), containers),
    ):
        for name in names:
            try:
                src = source_from(**{kind: name})
            except (BadSource, TypeError):
                continue
            caps = ctx.access.source_caps(hc, src)
            if caps:
                dest.append({"name": name, "capabilities": sorted(caps)})
    server.finish(
        ref,
        "read_end",
        {
            "files": len(files),
            "units": len(units),
            "containers": len(containers),
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
        },
    )
    return {
        "host": host,
        "files": files,
        "units": units,
        "containers": containers,
        "limits": doc.get("limits", {}),
    }


# ---------------------------------------------------------------------- reads


def _begin_read(
    server: Server,
    request: Request,
    action: str,
    host: str,
    capability: str,
    params: dict[str, Any],
    source: dict[str, str | None],
    download: bool,
) -> Allowed:
    """The audited start of a read of one source; `download` also needs that right."""
    if download:
        params["download"] = True
    return begin(
        server,
        request,
        action=action,
        host=host,
        capability=capability,
        params=params,
        source=source,
        also=DOWNLOAD if download else None,
    )


@router.get("/hosts/{host}/tail", summary="the last N lines (or a time window) of a source")
async def tail(
    request: Request,
    host: str,
    path: PathQ = None,
    unit: UnitQ = None,
    container: ContainerQ = None,
    lines: Lines = 200,
    since: TimeQ = None,
    until: TimeQ = None,
    download: bool = False,
) -> Response:
    """Give one of `path`, `unit` or `container`. With `since`/`until` a file is read by
    the gate's `range` (binary search on timestamps): the first `lines` lines of the window."""
    server = server_of(request)
    params: dict[str, Any] = {"lines": lines, "since": since, "until": until}
    source = {"path": path, "unit": unit, "container": container}
    a = _begin_read(server, request, "tail", host, TAIL, params, source, download)
    assert a.source is not None
    try:
        spec = ReadSpec.last(a.source, lines, since, until)
    except times.BadTime as exc:
        end(server, a, {"status": 422, "error": str(exc)})
        raise ApiError(422, str(exc)) from None
    data, outcome = await _worker_call(server, a, spec)
    return await _result(server, a, "tail", data, outcome, lines, download)


@router.get("/hosts/{host}/grep", summary="lines matching a pattern (fixed string by default)")
async def grep(
    request: Request,
    host: str,
    pattern: Annotated[str, Query(min_length=1, max_length=MAX_PATTERN)],
    path: PathQ = None,
    unit: UnitQ = None,
    container: ContainerQ = None,
    regex: bool = False,
    ignore_case: bool = False,
    invert: bool = False,
    max: Annotated[int, Query(ge=1, le=MAX_LINES)] = 1000,
    download: bool = False,
) -> Response:
    """Files: grep -F (or -E with `regex=true`) on the worker; units: journalctl -g.
    Containers have no server-side search in the gate: 422."""
    server = server_of(request)
    params: dict[str, Any] = {
        "pattern": pattern,
        "regex": regex,
        "ignore_case": ignore_case,
        "invert": invert,
        "max": max,
    }
    source = {"path": path, "unit": unit, "container": container}
    a = _begin_read(server, request, "grep", host, SEARCH, params, source, download)
    assert a.source is not None
    why = ReadSpec.unsearchable(a.source, invert)
    if why is not None:
        end(server, a, {"status": 422, "error": why})
        raise ApiError(422, why)
    try:  # before the worker is asked: a bad regex is the user's mistake, not a 502
        await patterns.check(pattern, regex, a.source.kind)
    except BadPattern as exc:
        end(server, a, {"status": 422, "error": str(exc)})
        raise ApiError(422, str(exc)) from None
    spec = ReadSpec.grep(
        a.source, pattern, regex=regex, ignore_case=ignore_case, invert=invert, max=max
    )
    data, outcome = await _worker_call(server, a, spec)
    return await _result(server, a, "grep", data, outcome, max, download)


# ---------------------------------------------------------------------- search


MAX_HOST_GLOBS = 16  # entries in a search's `hosts=`
MAX_MERGED_LINES = 50_000  # lines a search merges by time; files beyond are left out


def _merged_event(kept: dict[int, list[str]], left_out: list[int]) -> bytes:
    """The `merged` event: `src`, the file index of each line in time order (each file's
    lines keep their own order, so the n-th occurrence of an index is that file's n-th
    line); `undated`, files without a timestamp the merge reads (they come first)."""
    indexes = sorted(kept)
    merged = merge([kept[i] for i in indexes])
    event = {
        "type": "merged",
        "src": [indexes[k] for k in merged.src],
        "undated": [indexes[k] for k in merged.undated],
        "left_out": sorted(left_out),
        "cap": MAX_MERGED_LINES,
    }
    return _ndjson(event)


def host_globs(hosts: str) -> list[str | Glob]:
    """`hosts=` as label names and compiled globs; GlobError names what is wrong."""
    wanted = [h.strip() for h in hosts.split(",") if h.strip()] or ["*"]
    if len(wanted) > MAX_HOST_GLOBS:
        raise GlobError(f"hosts: at most {MAX_HOST_GLOBS} comma-separated entries")
    return [w if w.startswith("label:") else check_user_glob(w, "hosts") for w in wanted]


def searchable_hosts(
    server: Server,
    ctx: Ctx,
    hosts: str,
    *,
    action: str,
    params: dict[str, Any],
    source: str | None = None,
) -> list[HostConfig]:
    """The hosts `hosts` (globs or label:X, comma-separated) names that `ctx` may search;
    a bad glob is refused (422) and so is a selection of none (404), both audited."""
    try:
        if has_control(hosts):
            raise GlobError("hosts: control characters are not accepted")
        selected = _granted(server, ctx, host_globs(hosts))
    except GlobError as exc:
        raise server.refuse(
            ctx, 422, str(exc), action=action, host=hosts, source=source, params=params
        ) from None
    if not selected:
        raise server.refuse(
            ctx,
            404,
            f"no host you may search matches {hosts!r}",
            action=action,
            host=hosts,
            source=source,
            params=params,
        )
    return selected


def _granted(server: Server, ctx: Ctx, wanted: list[str | Glob]) -> list[HostConfig]:
    """Grants first: a user's globs are only ever matched against hosts they may search."""
    assert ctx.access is not None
    granted = [h for h in server.config.hosts if SEARCH in ctx.access.host_caps(h)]
    chosen = []
    for h in granted:
        for w in wanted:
            hit = w[6:] in h.labels if isinstance(w, str) else w.match(h.name)
            if hit:
                chosen.append(h)
                break
    return chosen


def _searchable(ctx: Ctx, host: HostConfig, doc: dict[str, Any], matcher: Glob) -> list[Source]:
    """The files of a sources listing that match the search's path glob and may be searched."""
    assert ctx.access is not None
    files: list[Source] = []
    for f in doc.get("files", []):
        p = f.get("path") if isinstance(f, dict) else None
        if not isinstance(p, str) or not matcher.match(p):
            continue
        try:
            src = source_from(path=p)
        except BadSource:
            continue
        if ctx.access.check(host, src, SEARCH).allowed:
            files.append(src)
    return files


@router.get(
    "/search",
    summary="search one source glob across hosts; streamed as JSON lines",
    response_class=StreamingResponse,
)
async def search(
    request: Request,
    pattern: Annotated[str, Query(min_length=1, max_length=MAX_PATTERN)],
    path: Annotated[str, Query(min_length=2, max_length=MAX_PATH)],
    hosts: Annotated[
        str, Query(max_length=512, description="host globs or label:X, comma-separated")
    ] = "*",
    regex: bool = False,
    ignore_case: bool = False,
    invert: bool = False,
    max: Annotated[int, Query(ge=1, le=MAX_LINES)] = 500,
    order: Annotated[
        Literal["host", "time"],
        Query(description="time: also a `merged` event, every file's lines by timestamp"),
    ] = "host",
) -> StreamingResponse:
    """Events, one JSON object per line: `start` (the hosts), `file` (per host and file:
    `index`, lines, truncated), `error` (per host), `progress`, with `order=time` a
    `merged` event once every host has answered, and `end`."""
    server = server_of(request)
    params = {
        "pattern": pattern,
        "regex": regex,
        "ignore_case": ignore_case,
        "invert": invert,
        "max": max,
        "hosts": hosts,
        **({"order": order} if order != "host" else {}),
    }
    ctx = server.require_user(request, "search", host=hosts, source=path, params=params)
    bad = [n for n, v in (("pattern", pattern), ("path", path), ("hosts", hosts)) if has_control(v)]
    if bad:
        raise server.refuse(
            ctx,
            422,
            f"{bad[0]}: control characters are not accepted",
            action="search",
            host=hosts,
            source=path,
            params=params,
        )
    if not path.startswith("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise server.refuse(
            ctx,
            422,
            "path: must be an absolute glob without '.' or '..'",
            action="search",
            host=hosts,
            source=path,
            params=params,
        )
    try:
        matcher = check_user_glob(path, "path")
    except GlobError as exc:
        raise server.refuse(
            ctx, 422, str(exc), action="search", host=hosts, source=path, params=params
        ) from None
    selected = searchable_hosts(server, ctx, hosts, action="search", params=params, source=path)
    try:
        await patterns.check(pattern, regex, "file")
    except BadPattern as exc:
        raise server.refuse(
            ctx, 422, str(exc), action="search", host=hosts, source=path, params=params
        ) from None
    ref = server.record(
        ctx,
        "read",
        action="search",
        host=hosts,
        source=path,
        params={**params, "selected": [h.name for h in selected]},
        decision="allow",
        reason="search granted on selected hosts",
    )
    started = time.monotonic()
    queue: asyncio.Queue[dict[str, Any] | bytes | None] = asyncio.Queue(maxsize=64)
    totals = {"lines": 0, "bytes": 0, "files": 0, "errors": 0}
    # order=time: each file's lines, by the `index` of its file event, for the merge
    kept: dict[int, list[str]] = {}
    left_out: list[int] = []

    async def one_host(h: HostConfig) -> None:
        assert ctx.access is not None
        try:
            doc = await server.workers.sources(h, {"user": ctx.name, "audit": ref.seq})
        except WorkerError as exc:
            totals["errors"] += 1
            await queue.put(
                {"type": "error", "host": h.name, "status": exc.status, "reason": exc.reason}
            )
            return
        # Off the event loop: a worker may list thousands of files.
        files = await asyncio.to_thread(_searchable, ctx, h, doc, matcher)
        if len(files) > MAX_FILES_PER_HOST:
            await queue.put(
                {
                    "type": "note",
                    "host": h.name,
                    "reason": f"{len(files)} files match; searching the first {MAX_FILES_PER_HOST}",
                }
            )
            files = files[:MAX_FILES_PER_HOST]
        if not files:
            await queue.put(
                {
                    "type": "error",
                    "host": h.name,
                    "status": 404,
                    "reason": "no file you may search matches the path",
                }
            )
        for src in files:
            sub = server.record(
                ctx,
                "read",
                action="grep",
                host=h.name,
                source=src.key,
                params={**params, "search": ref.seq},
                decision="allow",
                reason="part of a cross-host search",
            )
            t0 = time.monotonic()
            spec = ReadSpec.grep(
                src, pattern, regex=regex, ignore_case=ignore_case, invert=invert, max=max
            )
            try:
                data, outcome = await server.workers.read(
                    h, spec, {"user": ctx.name, "audit": sub.seq}
                )
            except WorkerError as exc:
                server.finish(sub, "read_end", {"status": exc.status, "error": exc.detail})
                totals["errors"] += 1
                await queue.put(
                    {
                        "type": "error",
                        "host": h.name,
                        "source": src.key,
                        "status": exc.status,
                        "reason": exc.reason,
                    }
                )
                if exc.status in (502, 504):  # the host itself failed: skip its other files
                    return
                continue
            lines, cut = await off_loop(len(data), split_lines, data, max)
            index = totals["files"]
            totals["files"] += 1
            if order == "time":
                if sum(map(len, kept.values())) + len(lines) <= MAX_MERGED_LINES:
                    kept[index] = lines
                else:
                    left_out.append(index)
            event = {
                "type": "file",
                "index": index,
                "host": h.name,
                "source": src.key,
                "lines": lines,
                "truncated": cut or outcome.truncated,
                "note": outcome.reason or None,
            }
            encoded = await off_loop(len(data), _ndjson, event)
            server.finish(
                sub,
                "read_end",
                {
                    **outcome.as_audit(),
                    "lines": len(lines),
                    "duration_ms": round((time.monotonic() - t0) * 1000, 3),
                },
            )
            totals["lines"] += len(lines)
            totals["bytes"] += len(data)
            await queue.put(encoded)

    async def run_all() -> None:
        done = 0

        async def wrapped(h: HostConfig) -> None:
            nonlocal done
            try:
                await one_host(h)
            except ApiError as exc:  # the audit trail failed mid-search: stop that host
                totals["errors"] += 1
                await queue.put(
                    {"type": "error", "host": h.name, "status": exc.status, "reason": exc.reason}
                )
            done += 1
            await queue.put(
                {"type": "progress", "done": done, "total": len(selected), "host": h.name}
            )

        turns = asyncio.Semaphore(server.workers.at_once)

        async def in_turn(h: HostConfig) -> None:
            async with turns:
                await wrapped(h)

        await asyncio.gather(*(in_turn(h) for h in selected))
        if order == "time":
            await queue.put(await asyncio.to_thread(_merged_event, kept, left_out))
        await queue.put(None)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run_all())
        sent = 0
        try:
            first = {"type": "start", "hosts": [h.name for h in selected], "audit": ref.seq}
            yield (json.dumps(first) + "\n").encode()
            while (item := await queue.get()) is not None:
                chunk = item if isinstance(item, bytes) else _ndjson(item)
                sent += len(chunk)
                yield chunk
            end = {"type": "end", **totals}
            yield (json.dumps(end) + "\n").encode()
        finally:
            task.cancel()
            server.metrics.sent("search", sent, totals["lines"])
            elapsed = round((time.monotonic() - started) * 1000, 3)
            with contextlib.suppress(ApiError):  # counted in metrics; the data is out already
                server.finish(
                    ref, "read_end", {**totals, "bytes_sent": sent, "duration_ms": elapsed}
                )

    return StreamingResponse(body(), media_type="application/x-ndjson")


# ---------------------------------------------------------------------- audit


def _time_param(name: str, value: str | None) -> str | None:
    """A time filter, or ValueError naming the parameter."""
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _audit_ctx(server: Server, request: Request, action: str, params: dict[str, Any]) -> Ctx:
    ctx = server.require_user(request, action, params=params)
    assert ctx.access is not None
    if not ctx.access.can_audit():
        raise server.refuse(
            ctx,
            403,
            "the audit trail is for roles with the audit capability",
            action=action,
            params=params,
        )
    return ctx


@router.get("/audit", summary="audit records, newest first (auditors only)")
async def audit(
    request: Request,
    user: Annotated[str | None, Query(max_length=128)] = None,
    host: Annotated[str | None, Query(max_length=128)] = None,
    source: Annotated[str | None, Query(max_length=1024)] = None,
    decision: Literal["allow", "deny"] | None = None,
    event: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    server = server_of(request)
    filters = {
        "user": user,
        "host": host,
        "source": source,
        "decision": decision,
        "event": event,
        "since": since,
        "until": until,
        "before": before,
    }
    filters = {k: v for k, v in filters.items() if v not in (None, "")}
    ctx = _audit_ctx(server, request, "audit", filters)
    try:
        since_ts = _time_param("since", since)
        until_ts = _time_param("until", until)
    except ValueError as exc:
        raise server.refuse(ctx, 422, str(exc), action="audit", params=filters) from None
    # The view itself is a record, written before any record is shown.
    ref = server.record(
        ctx,
        "audit_view",
        action="audit",
        params=filters,
        decision="allow",
        reason="audit capability",
    )
    records = server.audit.query(
        user=user or None,
        host=host or None,
        source=source or None,
        decision=decision,
        event=event or None,
        since=since_ts,
        until=until_ts,
        before_seq=before,
        limit=limit,
    )
    rows = [r.as_dict() for r in records if r.seq != ref.seq]
    return {
        "records": rows,
        "next_before": rows[-1]["seq"] if len(rows) >= limit else None,
        "head": str(server.audit.head() or ""),
    }


@router.get("/audit/export", summary="the audit trail as JSON lines or CSV (auditors only)")
async def audit_export(
    request: Request,
    format: Literal["jsonl", "csv"] = "jsonl",
    since: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    server = server_of(request)
    params = {"format": format, **({"since": since} if since else {})}
    ctx = _audit_ctx(server, request, "export", params)
    try:
        since_ts = _time_param("since", since)
    except ValueError as exc:
        raise server.refuse(ctx, 422, str(exc), action="export", params=params) from None
    ref = server.record(
        ctx, "export", action="export", params=params, decision="allow", reason="audit capability"
    )
    import io

    buf = io.StringIO(newline="")
    n = await asyncio.to_thread(server.audit.export, format, buf, since_ts)
    body = buf.getvalue().encode()
    server.finish(ref, "read_end", {"records": n, "bytes": len(body)})
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"logtorukun-audit.{'csv' if format == 'csv' else 'jsonl'}"
    return Response(
        body, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'}
    )


@router.get("/", include_in_schema=False)
async def api_root() -> JSONResponse:
    return JSONResponse({"openapi": "/openapi.json"})
