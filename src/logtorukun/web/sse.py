"""Live follow over Server-Sent Events, with one upstream per (host, source).

Why shared: two hundred people watching one log during an incident must not open two
hundred `tail -F` sessions on the worker (its `max_concurrent` would refuse most of
them). The first viewer starts the upstream; the last one leaving stops it.

Back-pressure without letting one slow browser stall the others: each viewer has a
bounded backlog (`BACKLOG` lines). The SSE writer drains it in batches (at most one
event per `BATCH_SECONDS`, so a log writing thousands of lines a second costs the
browser a few DOM updates a second). A viewer whose backlog is full loses the oldest
lines and is told how many (`dropped`), instead of the server buffering without
bound. Every viewer has its own follow_start/follow_end audit records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..config import HostConfig
from .access import FOLLOW, Source
from .api import ContainerQ, PathQ, UnitQ
from .context import ApiError, Ctx, Server
from .guard import begin, server_of
from .workers import ReadSpec, WorkerError

router = APIRouter(prefix="/api", tags=["api"])

BACKLOG = 5000  # lines a viewer may be behind before the oldest are dropped
BATCH_SECONDS = 0.025
MAX_BATCH = 2000
HEARTBEAT = 15.0
MAX_LINE = 64 * 1024  # a longer "line" is cut: one write must not become one huge event


class Viewer:
    """One browser following; holds its own bounded backlog of JSON-encoded lines."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.backlog: deque[str] = deque(maxlen=BACKLOG)
        self.dropped = 0
        self.dropped_total = 0
        self.wake = asyncio.Event()
        self.ended: str | None = None  # reason, once the upstream has ended
        self.lines = 0
        self.bytes = 0

    def push(self, lines: list[str]) -> None:
        # The deque's maxlen drops the oldest lines: the newest are what a live view is for.
        over = len(self.backlog) + len(lines) - BACKLOG
        if over > 0:
            self.dropped += over
        self.backlog.extend(lines)
        self.wake.set()

    def end(self, reason: str) -> None:
        self.ended = reason
        self.wake.set()


class Upstream:
    """One follow on a worker, fanned out to every viewer of that (host, source)."""

    def __init__(self, hub: FollowHub, host: HostConfig, source: Source, via: dict[str, Any]):
        self.hub, self.host, self.source = hub, host, source
        self.key = (host.name, source.key)
        self.viewers: set[Viewer] = set()
        self.lines = 0
        self.bytes = 0
        self.task = asyncio.create_task(self._run(via))

    async def _run(self, via: dict[str, Any]) -> None:
        reason = "the worker ended the follow"
        partial = b""
        try:
            spec = ReadSpec("follow", self.source)
            async with self.hub.server.workers.open(self.host, spec, via) as stream:
                async for chunk in stream.chunks():
                    data = partial + chunk
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        partial = data if len(data) < MAX_LINE else b""
                        if len(data) >= MAX_LINE:
                            self._fan([data[:MAX_LINE].decode("utf-8", "replace")])
                        continue
                    partial = data[cut + 1 :]
                    lines = data[:cut].decode("utf-8", "replace").split("\n")
                    self.bytes += cut + 1
                    self._fan([ln[:MAX_LINE] for ln in lines])
                if stream.outcome.reason:
                    reason = stream.outcome.reason
        except WorkerError as exc:
            reason = exc.reason
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        finally:
            self._unlist()
            for v in list(self.viewers):
                v.end(reason)

    def _fan(self, lines: list[str]) -> None:
        # JSON-encoded once here, not once per viewer: 200 viewers cost 200 joins.
        encoded = [json.dumps(ln, ensure_ascii=False) for ln in lines]
        self.lines += len(lines)
        for v in self.viewers:
            v.push(encoded)

    def _unlist(self) -> None:
        # Only if it is still us: a new upstream for the same key may have replaced us.
        if self.hub.upstreams.get(self.key) is self:
            del self.hub.upstreams[self.key]

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers and not self.task.done():
            self.task.cancel()
            self._unlist()


class FollowHub:
    """All upstream follows of this server, and the per-user follow count."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.upstreams: dict[tuple[str, str], Upstream] = {}
        self.per_user: dict[str, int] = {}

    def follower_count(self) -> int:
        return sum(len(u.viewers) for u in self.upstreams.values())

    async def join(
        self, host: HostConfig, source: Source, viewer: Viewer, via: dict[str, Any]
    ) -> Upstream:
        key = (host.name, source.key)
        up = self.upstreams.get(key)
        if up is None or up.task.done():
            # A bounded read first, so "no such file" or "refused by the gate" is an HTTP
            # status for the first viewer rather than an event after a 200.
            check = ReadSpec("tail", source, lines=1)
            await self.server.workers.read(host, check, via)
            up = self.upstreams.get(key)
            if up is None or up.task.done():
                up = Upstream(self, host, source, via)
                self.upstreams[key] = up
        up.viewers.add(viewer)
        return up

    async def close(self) -> None:
        ups = list(self.upstreams.values())
        for up in ups:
            up.task.cancel()
        for up in ups:
            with contextlib.suppress(BaseException):
                await up.task


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.get(
    "/hosts/{host}/follow",
    summary="live lines as Server-Sent Events",
    response_class=StreamingResponse,
)
async def follow(
    request: Request,
    host: str,
    path: PathQ = None,
    unit: UnitQ = None,
    container: ContainerQ = None,
) -> StreamingResponse:
    """Events: `lines` ({"lines": [...], "dropped": N}), `end` ({"reason"}); a comment
    line every 15 s keeps proxies from closing an idle stream. New lines only: get the
    recent ones with `tail` first."""
    server = server_of(request)
    hub: FollowHub = server.hub
    a = begin(
        server,
        request,
        action="follow",
        host=host,
        capability=FOLLOW,
        params={},
        source={"path": path, "unit": unit, "container": container},
        event="follow_start",
    )
    ctx: Ctx = a.ctx
    assert a.source is not None and ctx.user is not None
    user = ctx.user.name
    source_key = a.source.key
    cap = server.config.server.max_follows_per_user
    if hub.per_user.get(user, 0) >= cap:
        reason = f"at most {cap} live follows per user; close one first"
        server.finish(a.ref, "follow_end", {"status": 429, "error": reason})
        raise ApiError(429, reason)
    hub.per_user[user] = hub.per_user.get(user, 0) + 1
    viewer = Viewer(user)
    try:
        up = await hub.join(a.host, a.source, viewer, {"user": user, "audit": a.ref.seq})
    except WorkerError as exc:
        hub.per_user[user] -= 1
        server.finish(a.ref, "follow_end", {"status": exc.status, "error": exc.reason})
        raise ApiError(exc.status, exc.reason) from None
    except BaseException:
        hub.per_user[user] -= 1
        raise

    state = {"reason": "viewer closed", "done": False}

    async def cleanup() -> None:
        """Once per viewer: from the generator's end, or (if the client went away before
        the stream started) from the response's background task."""
        if state["done"]:
            return
        state["done"] = True
        up.leave(viewer)
        hub.per_user[user] = max(0, hub.per_user.get(user, 1) - 1)
        server.metrics.sent("follow", viewer.bytes, viewer.lines)
        with contextlib.suppress(ApiError):
            server.finish(
                a.ref,
                "follow_end",
                {
                    "lines": viewer.lines,
                    "bytes": viewer.bytes,
                    "reason": state["reason"],
                    "dropped": viewer.dropped_total,
                    "duration_ms": round((time.monotonic() - a.started) * 1000, 3),
                },
            )

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n" + _event(
                "ready", {"host": host, "source": source_key, "audit": a.ref.seq}
            )
            last_beat = time.monotonic()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(viewer.wake.wait(), timeout=HEARTBEAT)
                viewer.wake.clear()
                if viewer.backlog or viewer.dropped:
                    n = min(len(viewer.backlog), MAX_BATCH)
                    batch = [viewer.backlog.popleft() for _ in range(n)]
                    payload = (
                        f'event: lines\ndata: {{"lines":[{",".join(batch)}],'
                        f'"dropped":{viewer.dropped}}}\n\n'
                    ).encode()
                    viewer.dropped_total += viewer.dropped
                    viewer.dropped = 0
                    viewer.lines += len(batch)
                    viewer.bytes += len(payload)
                    yield payload
                    last_beat = time.monotonic()
                    if viewer.backlog:
                        viewer.wake.set()
                    await asyncio.sleep(BATCH_SECONDS)
                    continue
                if viewer.ended is not None:
                    state["reason"] = viewer.ended
                    yield _event("end", {"reason": viewer.ended})
                    return
                if time.monotonic() - last_beat >= HEARTBEAT:
                    yield b": keep-alive\n\n"
                    last_beat = time.monotonic()
        finally:
            await cleanup()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
        background=BackgroundTask(cleanup),
    )
