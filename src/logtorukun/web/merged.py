"""The merged view's API: several sources (files on one host or many, journal units,
containers) read as one stream, interleaved by time (merge.py), each line tagged with
the source it came from.

    GET /api/merged/tail?src=HOST:SOURCE&src=...&lines=N[&since&until]
    GET /api/merged/grep?src=...&pattern=S[&regex&ignore_case&invert&max]
        (either with &download=true: the merged lines as a file, `HOST:SOURCE<TAB>line`)
    GET /api/merged/follow?src=...[&from=I:INO:OFF:TAG ...]    (Server-Sent Events)

`SOURCE` is a path, `unit:NAME` or `container:NAME` (a source's key). At most
`MAX_SOURCES` sources. Every source is checked against the user's grants before anything
is read; if any is not allowed the whole request is refused (403), naming each refused
source, and each refusal is audited: a view that silently left out a host would look
complete and mislead. A host without any grant is named "unknown host", like everywhere
else. Each source read then has its own audit record (pointing at the merged request's
record), exactly like a read of that source alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from .. import times
from ..audit import AuditRef
from ..config import HostConfig
from ..gate.vocabulary import MAX_PATH, MAX_PATTERN
from . import patterns
from .access import DOWNLOAD, FOLLOW, SEARCH, TAIL, BadSource, Source
from .api import MAX_LINES, Lines, TimeQ, json_bytes, off_loop, split_lines
from .context import ApiError, Ctx, Server
from .fanout import BATCH_SECONDS, Viewer, render
from .guard import has_control, server_of
from .history import line_start
from .merge import MAX_SOURCES, host_source, merge
from .patterns import BadPattern
from .recheck import Credential
from .sse import FollowHub, Upstream
from .workers import Outcome, ReadSpec, WorkerError

router = APIRouter(prefix="/api/merged", tags=["merged view"])

SrcQ = Annotated[
    list[str],
    Query(
        description=f"HOST:SOURCE (a path, unit:NAME or container:NAME), repeated; "
        f"at most {MAX_SOURCES}"
    ),
]
MergedFromQ = Annotated[
    list[str],
    Query(
        alias="from",
        description="I:INODE:OFFSET:TAG: source number I (from 0) continues from that "
        "position (a merged tail's or an event's `pos`)",
    ),
]
_SRC_CHARS = MAX_PATH + 80


@dataclass(slots=True)
class Pick:
    """One source of a merged request, granted, with its own audit record."""

    label: str  # HOST:SOURCE, as the user wrote it (normalised)
    host: HostConfig
    source: Source
    ref: AuditRef | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""  # what the worker sent, while the reply is made (see _starts_of)


def _parse(spec: str) -> tuple[str, Source]:
    """`HOST:SOURCE` -> (host name, source); BadSource names what is wrong."""
    try:
        host, key = host_source(spec)
    except ValueError as exc:
        raise BadSource(f"src: {exc}") from None
    try:
        return host, Source.parse(key)
    except BadSource as exc:
        raise BadSource(f"src: {spec[:100]!r}: {exc}") from None


def pick(
    server: Server,
    request: Request,
    *,
    action: str,
    specs: list[str],
    capability: str,
    params: dict[str, Any],
    event: str = "read",
    download: bool = False,
) -> tuple[Ctx, AuditRef, list[Pick]]:
    """Authenticate, check every source (for `capability`, and `download` too for a
    download), audit: the merged request's own record and one per source. Raises
    ApiError (already audited) on any refusal."""
    if download:
        params = {**params, "download": True}
    shown = ", ".join(s[:_SRC_CHARS] for s in specs[: MAX_SOURCES + 1])[:2000]
    ctx = server.require_user(request, action, source=shown, params=params)
    assert ctx.access is not None

    def refuse(status: int, reason: str) -> ApiError:
        return server.refuse(ctx, status, reason, action=action, source=shown, params=params)

    if not specs:
        raise refuse(422, "src: choose at least one source (HOST:SOURCE)")
    if len(specs) > MAX_SOURCES:
        raise refuse(
            422,
            f"src: at most {MAX_SOURCES} sources in a merged view ({len(specs)} given); "
            "remove some",
        )
    for name, value in [*(("src", s) for s in specs), *params.items()]:
        if isinstance(value, str) and has_control(value):
            raise refuse(422, f"{name}: control characters are not accepted")
        if name == "src" and len(value) > _SRC_CHARS:
            raise refuse(422, f"src: at most {_SRC_CHARS} characters per source")
    parsed: list[tuple[str, str, Source]] = []
    for spec in specs:
        try:
            host, source = _parse(spec)
        except BadSource as exc:
            raise refuse(422, str(exc)) from None
        label = f"{host}:{source.key}"
        if any(x[0] == label for x in parsed):
            raise refuse(422, f"src: {label} is given twice")
        parsed.append((label, host, source))
    picks: list[Pick] = []
    refused: list[str] = []
    for label, host, source in parsed:
        hc = server.config.host(host)
        audit: dict[str, Any] = {"action": action, "host": host, "source": source.key}
        audit["params"] = {**params, "merged": shown}
        if hc is None or not ctx.access.host_caps(hc):
            why = "unknown host" if hc is None else "no role grants anything on the host"
            server.refuse(ctx, 404, f"{why} (answered as unknown)", **audit)
            refused.append(f"{label} (unknown host {host!r})")
            continue
        decision = ctx.access.check(hc, source, capability)
        if decision.allowed and download:
            decision = ctx.access.check(hc, source, DOWNLOAD)
        if not decision.allowed:
            server.refuse(ctx, 403, decision.reason, **audit)
            refused.append(f"{label} ({decision.reason})")
            continue
        may = {"download": ctx.access.check(hc, source, DOWNLOAD).allowed}  # its button
        picks.append(Pick(label, hc, source, extra=may))
    if refused:
        raise ApiError(
            403,
            f"src: not allowed in a merged view: {'; '.join(refused)}. Remove "
            + ("it" if len(refused) == 1 else "them")
            + " and try again",
        )
    hosts = ",".join(dict.fromkeys(p.host.name for p in picks))
    parent = server.record(
        ctx,
        event,
        action=f"merged_{action}",
        host=hosts[:1000],
        source=shown,
        params={**params, "sources": [p.label for p in picks]},
        decision="allow",
        reason=f"{capability} granted on every source",
    )
    for p in picks:
        p.ref = server.record(
            ctx,
            event,
            action=action,
            host=p.host.name,
            source=p.source.key,
            params={**params, "merged": parent.seq},
            decision="allow",
            reason=f"{capability} granted (part of merged view #{parent.seq})",
        )
    return ctx, parent, picks


def _via(ctx: Ctx, p: Pick) -> dict[str, Any]:
    assert p.ref is not None
    return {"user": ctx.name, "audit": p.ref.seq}


def fail_picks(
    server: Server,
    parent: AuditRef,
    picks: list[Pick],
    status: int,
    why: str,
    event: str = "read_end",
) -> ApiError:
    """A merged request refused after `pick`: every source's record and its own end."""
    for p in picks:
        assert p.ref is not None
        server.finish(p.ref, event, {"status": status, "error": why})
    server.finish(parent, event, {"status": status, "error": why})
    return ApiError(status, why)


async def _read_all(
    server: Server, ctx: Ctx, picks: list[Pick], specs: list[ReadSpec], limit: int
) -> list[list[str]]:
    """Every source's lines (one worker read each, all at once). A failed source is
    reported in its `extra` and contributes nothing; the others go on."""

    async def one(p: Pick, spec: ReadSpec) -> list[str]:
        assert p.ref is not None
        t0 = time.monotonic()
        try:
            data, outcome = await server.workers.read(p.host, spec, _via(ctx, p))
        except WorkerError as exc:
            server.finish(p.ref, "read_end", {"status": exc.status, "error": exc.detail})
            p.extra.update(status=exc.status, error=exc.reason)
            return []
        lines, cut = await off_loop(len(data), split_lines, data, limit)
        p.extra.update(_describe(outcome, cut, len(lines)))
        if "pos" in p.extra and not cut and spec.verb in ("tail", "range"):
            p.data = data  # the file's bytes just before `pos`
        server.finish(
            p.ref,
            "read_end",
            {
                **outcome.as_audit(),
                "bytes": len(data),
                "lines": len(lines),
                "truncated": bool(cut or outcome.truncated),
                "duration_ms": round((time.monotonic() - t0) * 1000, 3),
            },
        )
        return lines

    return list(await asyncio.gather(*(one(p, s) for p, s in zip(picks, specs, strict=True))))


def _describe(outcome: Outcome, cut: bool, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "truncated": bool(cut or outcome.truncated)}
    if outcome.truncated or cut:
        out["note"] = outcome.reason or "capped by the web server"
    if outcome.pos is not None:
        out["pos"] = ":".join(map(str, outcome.pos))
    return out


def _starts_of(picks: list[Pick], per_source: list[list[str]], src: list[int], last: bool) -> None:
    """Each file's `start`: where the lines of it that are shown begin (`INO:OFF`), the
    `before` of its first page back (merged_history.py). A tail shows each source's last
    lines (the older ones the merge left out are above `start`); a time window its first."""
    shown = [0] * len(picks)
    for i in src:
        shown[i] += 1
    for i, p in enumerate(picks):
        if p.data:
            ino, end = (int(x) for x in p.extra["pos"].split(":")[:2])
            hidden = len(per_source[i]) - shown[i] if last else 0
            p.extra["start"] = f"{ino}:{end - len(p.data) + line_start(p.data, hidden)}"
            p.data = b""


def _as_file(picks: list[Pick], lines: list[str], src: list[int]) -> bytes:
    """A merged download: each line after its source's `HOST:SOURCE` and a tab (so
    `cut -f2-` gives the lines back and `grep ^web1:` one host's)."""
    rows = zip(lines, src, strict=True)
    return "".join(f"{picks[i].label}\t{line}\n" for line, i in rows).encode()


async def _answer(
    server: Server,
    parent: AuditRef,
    picks: list[Pick],
    per_source: list[list[str]],
    action: str,
    limit: int,
    keep: Literal["last", "first"],
    started: float,
    download: bool = False,
) -> Response:
    size = sum(len(line) for lines in per_source for line in lines)
    merged = await off_loop(size, functools.partial(merge, per_source, limit=limit, keep=keep))
    _starts_of(picks, per_source, merged.src, keep == "last")
    notes = [f"{picks[i].label}: no timestamps found, its lines come first" for i in merged.undated]
    cut = bool(merged.cut) and keep == "first"  # a tail's older lines are not news
    if cut:
        notes.append(f"{merged.cut} later merged lines left out: at most {limit} are shown")
    notes += [f"{p.label}: {p.extra['error']}" for p in picks if "error" in p.extra]
    done: dict[str, Any] = {
        "lines": len(merged.lines),
        "failed": sum(1 for p in picks if "error" in p.extra),
    }
    if download:
        body = await off_loop(size, _as_file, picks, merged.lines, merged.src)
        done.update(bytes=len(body), download=True, truncated=cut)
        done["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        server.finish(parent, "read_end", done)
        server.metrics.sent("download", len(body), len(merged.lines))
        return Response(
            body,
            media_type="text/plain; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="merged_{action}.log"'},
        )
    payload = {
        "action": action,
        "sources": [
            {
                "label": p.label,
                "host": p.host.name,
                "source": p.source.key,
                "kind": p.source.kind,
                "audit": p.ref.seq if p.ref else None,
                **p.extra,
            }
            for p in picks
        ],
        "lines": merged.lines,
        "src": merged.src,
        "count": len(merged.lines),
        "truncated": cut or any(p.extra.get("truncated") for p in picks),
        "notes": notes,
        "audit": parent.seq,
    }
    body = await off_loop(size, json_bytes, payload)
    done.update(bytes=len(body), duration_ms=round((time.monotonic() - started) * 1000, 3))
    server.finish(parent, "read_end", done)
    server.metrics.sent(f"merged_{action}", len(body), len(merged.lines))
    return Response(body, media_type="application/json")


@router.get("/tail", summary="the last N lines of several sources, interleaved by time")
async def merged_tail(
    request: Request,
    src: SrcQ,
    lines: Lines = 200,
    since: TimeQ = None,
    until: TimeQ = None,
    download: bool = False,
) -> Response:
    """Each source's last `lines` lines (or, with since/until, the first `lines` of the
    window), merged by timestamp; `lines` of the result at most. `src[i]` of each line
    is the index of its source in `sources`. A file's `pos` is where a merged follow
    continues it (`from=I:POS`), its `start` where paging back begins. `download`: the
    same lines as a file (needs `download` on every source)."""
    server = server_of(request)
    started = time.monotonic()
    params = {k: v for k, v in {"lines": lines, "since": since, "until": until}.items() if v}
    ctx, parent, picks = pick(
        server, request, action="tail", specs=src, capability=TAIL, params=params, download=download
    )
    try:
        specs = [ReadSpec.last(p.source, lines, since, until) for p in picks]
    except times.BadTime as exc:
        raise fail_picks(server, parent, picks, 422, str(exc)) from None
    per_source = await _read_all(server, ctx, picks, specs, lines)
    keep: Literal["last", "first"] = "first" if since or until else "last"
    return await _answer(server, parent, picks, per_source, "tail", lines, keep, started, download)


@router.get("/grep", summary="matching lines of several sources, interleaved by time")
async def merged_grep(
    request: Request,
    src: SrcQ,
    pattern: Annotated[str, Query(min_length=1, max_length=MAX_PATTERN)],
    regex: bool = False,
    ignore_case: bool = False,
    invert: bool = False,
    max: Annotated[int, Query(ge=1, le=MAX_LINES)] = 1000,
    download: bool = False,
) -> Response:
    """Each source searched on its worker (grep -m `max`; units with journalctl -g),
    merged by timestamp; the first `max` lines of the result at most. Containers
    cannot be searched on the worker: 422 naming them. `download` as for the tail."""
    server = server_of(request)
    started = time.monotonic()
    params: dict[str, Any] = {
        "pattern": pattern,
        "regex": regex,
        "ignore_case": ignore_case,
        "invert": invert,
        "max": max,
    }
    ctx, parent, picks = pick(
        server,
        request,
        action="grep",
        specs=src,
        capability=SEARCH,
        params=params,
        download=download,
    )

    def fail(status: int, why: str) -> ApiError:
        return fail_picks(server, parent, picks, status, why)

    for p in picks:
        why = ReadSpec.unsearchable(p.source, invert)
        if why is not None:
            raise fail(422, f"src: {p.label}: {why}")
    try:
        for kind in dict.fromkeys(p.source.kind for p in picks):
            await patterns.check(pattern, regex, kind)
    except BadPattern as exc:
        raise fail(422, str(exc)) from None
    specs = [
        ReadSpec.grep(
            p.source, pattern, regex=regex, ignore_case=ignore_case, invert=invert, max=max
        )
        for p in picks
    ]
    per_source = await _read_all(server, ctx, picks, specs, max)
    return await _answer(server, parent, picks, per_source, "grep", max, "first", started, download)


# ---------------------------------------------------------------------- follow


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _starts(picks: list[Pick], froms: list[str]) -> dict[int, tuple[int, int, int]]:
    """`from=I:INO:OFF:TAG` values by source number; ValueError names what is wrong."""
    out: dict[int, tuple[int, int, int]] = {}
    for f in froms:
        parts = f.split(":")
        if len(parts) != 4 or not all(x.isdigit() and len(x) <= 20 for x in parts):
            raise ValueError(f"from: {f[:60]!r} is not I:INODE:OFFSET:TAG")
        i, ino, off, tag = map(int, parts)
        if i >= len(picks):
            raise ValueError(f"from: source {i} does not exist (there are {len(picks)})")
        if picks[i].source.kind != "file":
            raise ValueError(f"from: only files can be followed from a position ({picks[i].label})")
        out[i] = (ino, off, tag)
    return out


def _unexpected(exc: BaseException | None) -> bool:
    return exc is not None and not isinstance(exc, WorkerError)


def _give_back(tasks: list[asyncio.Task[Upstream]], viewers: list[Viewer]) -> None:
    """Undo the joins of a merged follow that does not start: the sources joined leave
    (the last viewer leaving stops an upstream), the others are cancelled."""
    for i, t in enumerate(tasks):
        if not t.done():
            t.cancel()
        elif not t.cancelled() and t.exception() is None:
            t.result().leave(viewers[i])


@router.get(
    "/follow",
    summary="live lines of several sources as one Server-Sent Events stream",
    response_class=StreamingResponse,
)
async def merged_follow(request: Request, src: SrcQ, from_: MergedFromQ = []) -> StreamingResponse:  # noqa: B006
    """One stream for several sources, in the order lines arrive (live lines are not
    re-sorted by timestamp). Events as for a single follow, each with `src` (the source's
    index): `ready` ({"sources": [{label, pos}], "heartbeat", "failed"}), `lines`
    ({"src", "lines", "dropped", "pos"}), `gap` ({"src", "reason", "pos"}), `beat`,
    `end` ({"src", "reason", "retry"}: when any source ends, the merged follow ends,
    so the browser starts it again from each source's last `pos`). Counts as one
    follow against `max_follows_per_user`."""
    server = server_of(request)
    hub: FollowHub = server.hub
    params: dict[str, Any] = {"from": from_} if from_ else {}
    ctx, parent, picks = pick(
        server,
        request,
        action="follow",
        specs=src,
        capability=FOLLOW,
        params=params,
        event="follow_start",
    )
    assert ctx.user is not None
    user = ctx.user.name

    def fail(status: int, why: str) -> ApiError:
        return fail_picks(server, parent, picks, status, why, "follow_end")

    try:
        starts = _starts(picks, from_)
    except ValueError as exc:
        raise fail(422, str(exc)) from None
    cap = server.config.server.max_follows_per_user
    slot = hub.shared.take(user, cap) if hub.shared is not None else None
    if hub.per_user.get(user, 0) >= cap or (hub.shared is not None and slot is None):
        hub.release(slot)
        raise fail(429, f"at most {cap} live follows per user; close one first")
    hub.per_user[user] = hub.per_user.get(user, 0) + 1
    wake = asyncio.Event()
    viewers: list[Viewer] = []
    for _ in picks:
        v = Viewer(user)
        v.wake = wake  # one event for all: the stream wakes when any source has news
        viewers.append(v)

    async def join(i: int) -> Upstream:
        p = picks[i]
        return await hub.join(p.host, p.source, viewers[i], _via(ctx, p), starts.get(i))

    tasks = [asyncio.ensure_future(join(i)) for i in range(len(picks))]
    try:
        await asyncio.wait(tasks)
    except BaseException:  # the client went away while the sources were being joined
        _give_back(tasks, viewers)
        hub.per_user[user] -= 1
        hub.release(slot)
        with contextlib.suppress(ApiError):
            fail(499, "the client went away before the follow started")
        raise
    bug = next((t.exception() for t in tasks if _unexpected(t.exception())), None)
    if bug is not None:  # not a worker's refusal: give back what was taken, then raise
        _give_back(tasks, viewers)
        hub.per_user[user] -= 1
        hub.release(slot)
        with contextlib.suppress(ApiError):
            fail(500, f"internal error: {bug!r}")
        raise bug
    ups: dict[int, Upstream] = {}
    failed: list[dict[str, Any]] = []
    for i, t in enumerate(tasks):
        p = picks[i]
        assert p.ref is not None
        r = t.exception()
        if isinstance(r, WorkerError):
            server.finish(p.ref, "follow_end", {"status": r.status, "error": r.detail})
            failed.append({"src": i, "label": p.label, "status": r.status, "reason": r.reason})
        else:
            ups[i] = t.result()
            hub.recheck.add(viewers[i], Credential.of(ctx, p.host, p.source))
    if not ups:
        hub.per_user[user] -= 1
        hub.release(slot)
        first = failed[0]
        why = "; ".join(f"{f['label']}: {f['reason']}" for f in failed)
        server.finish(parent, "follow_end", {"status": first["status"], "error": why})
        raise ApiError(first["status"], why)

    state = {"reason": "viewer closed", "done": False}

    async def cleanup() -> None:
        if state["done"]:
            return
        state["done"] = True
        total_lines = total_bytes = 0
        for i, up in ups.items():
            v, p = viewers[i], picks[i]
            assert p.ref is not None
            hub.recheck.remove(v)
            up.leave(v)
            total_lines += v.lines
            total_bytes += v.bytes
            with contextlib.suppress(ApiError):
                server.finish(
                    p.ref,
                    "follow_end",
                    {
                        "lines": v.lines,
                        "bytes": v.bytes,
                        "reason": state["reason"],
                        "dropped": v.dropped_total,
                    },
                )
        server.metrics.sent("merged_follow", total_bytes, total_lines)
        with contextlib.suppress(ApiError):
            server.finish(
                parent,
                "follow_end",
                {"lines": total_lines, "bytes": total_bytes, "reason": state["reason"]},
            )
        hub.per_user[user] = max(0, hub.per_user.get(user, 1) - 1)
        hub.release(slot)

    def batch(i: int, v: Viewer) -> bytes:
        """Source i's waiting lines (at most MAX_BATCH) and gaps, as events."""
        got = ups[i].out.take(v)
        if got is None:
            return b""
        payload, count = render(*got, src=i)
        v.lines += count
        v.bytes += len(payload)
        return payload

    async def events() -> AsyncIterator[bytes]:
        try:
            beat = hub.heartbeat
            ready = {
                "audit": parent.seq,
                "heartbeat": beat,
                "sources": [
                    {
                        "src": i,
                        "label": picks[i].label,
                        "pos": ups[i].pos if i not in starts else ":".join(map(str, starts[i])),
                    }
                    for i in ups
                ],
                "failed": failed,
            }
            yield b"retry: 3000\n" + _sse("ready", ready)
            last_beat = last_sent = time.monotonic()
            while True:
                hub.keep_counted()
                if not wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(beat):
                            await wake.wait()
                wake.clear()
                revoked = next((i for i in ups if viewers[i].revoked is not None), None)
                if revoked is not None:
                    v = viewers[revoked]
                    state["reason"] = v.revoked or "revoked"
                    yield _sse("end", {"src": revoked, "reason": v.ended, "retry": False})
                    return
                busy = [i for i in ups if ups[i].out.behind(viewers[i])]
                if busy:
                    gap_s = last_sent + BATCH_SECONDS - time.monotonic()
                    if gap_s > 0:
                        await asyncio.sleep(gap_s)
                    for i in busy:
                        yield batch(i, viewers[i])
                    last_beat = last_sent = time.monotonic()
                    if any(ups[i].out.behind(viewers[i]) for i in ups):
                        wake.set()
                    continue
                # (an ended source's last lines first: they go out with its last flush)
                ended = next(
                    (
                        i
                        for i in ups
                        if viewers[i].ended is not None and viewers[i].cursor >= ups[i].out.end
                    ),
                    None,
                )
                if ended is not None:
                    v = viewers[ended]
                    state["reason"] = f"{picks[ended].label}: {v.ended}"
                    yield _sse("end", {"src": ended, "reason": v.ended, "retry": v.retry})
                    return
                now = time.monotonic()
                if now - last_beat >= beat:
                    if all(up.alive(now, beat) for up in ups.values()):
                        yield _sse("beat", {"pos": {str(i): up.pos for i, up in ups.items()}})
                    else:
                        yield b": keep-alive\n\n"
                    last_beat = now
        finally:
            await cleanup()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
        background=BackgroundTask(cleanup),
    )
