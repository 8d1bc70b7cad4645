"""Live follow over Server-Sent Events, with one upstream per (host, source).

Why shared: two hundred people watching one log during an incident must not open two
hundred `tail -F` sessions on the worker (its `max_concurrent` would refuse most of
them). The first viewer starts the upstream; the last one leaving stops it.

The fan-out (fanout.py): one ring of recent lines per upstream, encoded once, written to
every caught-up viewer in one pass; a slow browser is skipped while its socket is full
and then gets what arrived meanwhile as one event, and a viewer that falls more than
`BACKLOG` lines behind loses the oldest and is told how many (`dropped`), instead of the
server buffering without bound. Every viewer has its own follow_start/follow_end audit
records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..client.stream import Position
from ..config import HostConfig
from ..gate.protocol import POS_EVERY
from .access import FOLLOW, Source
from .api import ContainerQ, PathQ, UnitQ, worker_failed
from .context import ApiError, Ctx, Server
from .fanout import Entry, Fanout, Resume, Viewer, event, render
from .guard import begin, server_of
from .recheck import Credential, Rechecker
from .shared import SharedFollows
from .workers import ReadSpec, WorkerError

router = APIRouter(prefix="/api", tags=["api"])

FromQ = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=r"^[0-9]{1,20}:[0-9]{1,20}:[0-9]{1,10}$",
        description="INODE:OFFSET:TAG to continue from (a tail's or an event's `pos`)",
    ),
]

HEARTBEAT = 15.0
MAX_LINE = 64 * 1024  # a longer "line" is cut: one write must not become one huge event
MAX_PENDING = 1 << 20  # bytes held waiting for their position before going out without
TAG_BYTES = 64  # a position's tag: CRC32 of the file's 64 bytes before it (as the gate's)


class Upstream:
    """One follow on a worker, fanned out to every viewer of that (host, source).

    A file follow asks the gate for positions: lines are held until the position after
    them arrives (right after their data), so every line sent to a browser can carry
    the exact (inode, offset) to continue from after a drop. The last `BACKLOG` lines are
    kept with their positions (the fan-out's ring): a viewer that joins from a position
    among them is replayed the rest and then shares this upstream.
    """

    def __init__(
        self,
        hub: FollowHub,
        host: HostConfig,
        source: Source,
        via: dict[str, Any],
        start: tuple[int, int, int] | None = None,
    ):
        self.hub, self.host, self.source = hub, host, source
        self.key = (host.name, source.key)
        self.out = Fanout()
        self.lines = 0
        self.bytes = 0
        self.positions = source.kind == "file"
        # (inode, offset) after the last line fanned out, its token, and the file's last
        # TAG_BYTES bytes before that offset when known (to tag each line's position)
        self.cur: tuple[int, int] | None = None if start is None else start[:2]
        self.pos: str | None = None if start is None else _token(*start)
        self.recent: bytes | None = None
        self.heard = time.monotonic()  # the worker's last sign of life (data or position)
        self.task = asyncio.create_task(self._run(via, start))

    def alive(self, now: float, heartbeat: float) -> bool:
        """Heard from the worker lately (only file follows have worker heartbeats)."""
        return not self.positions or now - self.heard < max(heartbeat, 2 * POS_EVERY + 0.5)

    async def _run(self, via: dict[str, Any], start: tuple[int, int, int] | None) -> None:
        reason, retry = "the worker ended the follow", True
        partial = b""
        pending: list[bytes] = []  # complete lines waiting for the position after them
        pending_bytes = 0
        try:
            spec = ReadSpec("follow", self.source, start=start)
            async with self.hub.server.workers.open(self.host, spec, via) as stream:
                async for item in stream.items():
                    self.heard = time.monotonic()
                    if isinstance(item, Position):
                        self._positioned(pending, pending_bytes, item)
                        pending, pending_bytes = [], 0
                        continue
                    data = partial + item
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        partial = data if len(data) < MAX_LINE else b""
                        if len(data) >= MAX_LINE:
                            self._fan([_entry(data[:MAX_LINE])])
                        continue
                    partial = data[cut + 1 :]
                    raw = data[:cut].split(b"\n")
                    self.bytes += cut + 1
                    if not self.positions:
                        self._fan([_entry(ln) for ln in raw])
                        continue
                    pending.extend(raw)
                    pending_bytes += cut + 1
                    if pending_bytes > MAX_PENDING:  # no position came: do not hold more
                        self._fan([_entry(ln) for ln in pending])
                        pending, pending_bytes = [], 0
                        self.cur = self.pos = self.recent = None
                if pending:
                    self._fan([_entry(ln) for ln in pending])
                if stream.outcome.reason:
                    reason = stream.outcome.reason
        except WorkerError as exc:
            reason, retry = exc.reason, exc.status >= 500
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        finally:
            self._unlist()
            for v in list(self.viewers):
                v.end(reason, retry)

    def _positioned(self, lines: list[bytes], nbytes: int, pos: Position) -> None:
        """Lines that end at `pos`. When the byte count proves they are exactly the
        file's bytes since the last position, each line gets its own position (its tag
        computed here as the gate would), so a viewer can join after any of them."""
        token = _token(pos.ino, pos.off, pos.tag)
        entries: list[Entry] = []
        cur = self.cur
        exact = cur is not None and cur[0] == pos.ino and pos.off - cur[1] == nbytes
        recent = self.recent if exact else None
        if lines and exact and cur is not None:
            blob = (recent or b"") + b"\n".join(lines) + b"\n"
            k, off = len(recent or b""), cur[1]
            for ln in lines:
                k += len(ln) + 1
                off += len(ln) + 1
                if recent is not None or k >= TAG_BYTES:
                    tag = zlib.crc32(blob[max(0, k - TAG_BYTES) : k])
                    entries.append((_encode(ln), _token(pos.ino, off, tag), None))
                else:
                    entries.append(_entry(ln))
            if recent is not None or len(blob) >= TAG_BYTES:
                self.recent = blob[-TAG_BYTES:]
        elif lines:
            entries = [_entry(ln) for ln in lines]
        if entries:
            entries[-1] = (entries[-1][0], token, None)
        if not lines and not exact:
            self.recent = b"" if pos.off == 0 else None
        elif not exact:
            self.recent = None
        if pos.gap:
            entries.append((None, token, pos.gap))
        self.cur, self.pos = (pos.ino, pos.off), token
        if entries:
            self._fan(entries)

    @property
    def viewers(self) -> set[Viewer]:
        return self.out.viewers

    def _fan(self, entries: list[Entry]) -> None:
        # JSON-encoded once here, then rendered once per flush for all viewers.
        self.lines += len(entries)
        self.out.add(entries)

    def replay_after(self, token: str) -> int | None:
        """Where a viewer that has everything up to `token` goes on from in the ring,
        or None if this upstream cannot tell (the position is not among its recent
        lines)."""
        if token == self.pos:
            return self.out.end
        return self.out.after(token)

    def _unlist(self) -> None:
        # Only if it is still us: a new upstream for the same key may have replaced us.
        if self.hub.upstreams.get(self.key) is self:
            del self.hub.upstreams[self.key]
        self.hub.private.discard(self)

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers and not self.task.done():
            self.task.cancel()
            self._unlist()


def _token(ino: int, off: int, tag: int) -> str:
    return f"{ino}:{off}:{tag}"


def _encode(line: bytes) -> str:
    return json.dumps(line[:MAX_LINE].decode("utf-8", "replace"), ensure_ascii=False)


def _entry(line: bytes) -> Entry:
    return (_encode(line), None, None)


class FollowHub:
    """All upstream follows of this server, and the per-user follow count."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.upstreams: dict[tuple[str, str], Upstream] = {}
        # Viewers continuing from a position the shared upstream no longer holds get an
        # upstream of their own (usually a reconnect after a long drop).
        self.private: set[Upstream] = set()
        self.per_user: dict[str, int] = {}
        self.heartbeat = HEARTBEAT
        self.recheck = Rechecker(server, server.config.server.follow_recheck_seconds)
        # On PostgreSQL the per-user cap counts the follows of every instance.
        url = server.config.server.database_url
        self.shared = SharedFollows(url) if url else None

    def release(self, slot: str | None) -> None:
        if slot is not None and self.shared is not None:
            with contextlib.suppress(Exception):  # a stale row stops counting by itself
                self.shared.release(slot)

    def keep_counted(self) -> None:
        """Refresh this instance's follows in the shared count (at most every 10 s)."""
        if self.shared is not None:
            with contextlib.suppress(Exception):  # not refreshed: they stop counting
                self.shared.heartbeat()

    def follower_count(self) -> int:
        ups = [*self.upstreams.values(), *self.private]
        return sum(len(u.viewers) for u in ups)

    def _live(self, key: tuple[str, str]) -> Upstream | None:
        up = self.upstreams.get(key)
        return up if up is not None and not up.task.done() else None

    async def join(
        self,
        host: HostConfig,
        source: Source,
        viewer: Viewer,
        via: dict[str, Any],
        start: tuple[int, int, int] | None = None,
    ) -> Upstream:
        """Add `viewer` to the shared upstream, replaying what it missed since `start`;
        from a position the upstream no longer holds, to an upstream of its own."""
        key = (host.name, source.key)
        up = self._live(key)
        if up is None:
            # A bounded read first, so "no such file" or "refused by the gate" is an HTTP
            # status for the first viewer rather than an event after a 200. A file's
            # follow then starts where that read ended: every line written after the
            # `ready` event is delivered, however late the worker's follow gets going.
            _, first = await self.server.workers.read(host, ReadSpec("tail", source, lines=1), via)
            up = self._live(key)
            if up is None:
                start = start or first.pos
                up = Upstream(self, host, source, via, start)
                self.upstreams[key] = up
                up.viewers.add(viewer)
                return up
        viewer.cursor = up.out.end  # new lines only
        if start is not None:
            replay = up.replay_after(_token(*start))
            if replay is None:
                up = Upstream(self, host, source, via, start)
                self.private.add(up)
                viewer.cursor = 0
            else:
                viewer.cursor = replay
        up.viewers.add(viewer)
        return up

    async def close(self) -> None:
        await self.recheck.close()
        ups = [*self.upstreams.values(), *self.private]
        for up in ups:
            up.task.cancel()
        for up in ups:
            with contextlib.suppress(BaseException):
                await up.task


def _event(name: str, data: dict[str, Any]) -> bytes:
    return event(name, data).encode()


class _EventStream(Response):
    """The SSE response: `run(send)` is the viewer's task; it ends when the browser
    disconnects (watched here, as StreamingResponse does), and `cleanup` runs once in
    every case, including a client gone before the first byte."""

    media_type = "text/event-stream"

    def __init__(
        self, run: Callable[[Send], Awaitable[None]], cleanup: Callable[[], Awaitable[None]]
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"x-accel-buffering": "no"})  # no body: no content-length
        self.run, self.cleanup = run, cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self.run(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            watcher.cancel()
            await self.cleanup()


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
    from_: FromQ = None,
) -> Response:
    """Events: `ready` ({"heartbeat": seconds, "pos"}), `lines` ({"lines": [...],
    "dropped": N, "pos": "INO:OFF" after the last line}), `gap` ({"reason"}: lines the
    worker could not read), `beat` (every `heartbeat` seconds while the worker is
    heard from; none for two intervals means stalled), `end` ({"reason", "retry"}).
    New lines only (every line written after `ready`): get the recent ones with `tail`
    first and pass its `pos` as `from` to lose nothing in between; after a drop, pass
    the last `pos` received."""
    server = server_of(request)
    hub: FollowHub = server.hub
    a = begin(
        server,
        request,
        action="follow",
        host=host,
        capability=FOLLOW,
        params={"from": from_},
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
    start = None
    if from_ is not None:
        if a.source.kind != "file":
            why = "from: only files can be followed from a position"
            server.finish(a.ref, "follow_end", {"status": 422, "error": why})
            raise ApiError(422, why)
        ino, off, tag = from_.split(":")
        start = (int(ino), int(off), int(tag))
    slot = hub.shared.take(user, cap) if hub.shared is not None else None
    if hub.shared is not None and slot is None:  # the cap, counted over every instance
        reason = f"at most {cap} live follows per user; close one first"
        server.finish(a.ref, "follow_end", {"status": 429, "error": reason})
        raise ApiError(429, reason)
    hub.per_user[user] = hub.per_user.get(user, 0) + 1
    viewer = Viewer(user)
    try:
        up = await hub.join(a.host, a.source, viewer, {"user": user, "audit": a.ref.seq}, start)
    except WorkerError as exc:
        hub.per_user[user] -= 1
        hub.release(slot)
        server.finish(a.ref, "follow_end", {"status": exc.status, "error": exc.detail})
        raise worker_failed(exc, a.ref.seq) from None
    except BaseException:
        hub.per_user[user] -= 1
        hub.release(slot)
        raise
    hub.recheck.add(viewer, Credential.of(ctx, a.host, a.source))

    state = {"reason": "viewer closed", "done": False}

    async def cleanup() -> None:
        """Once per viewer, when its response ends, however it ends."""
        if state["done"]:
            return
        state["done"] = True
        hub.recheck.remove(viewer)
        up.leave(viewer)
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
        # After the end record: whoever sees the slot free also finds the record.
        hub.per_user[user] = max(0, hub.per_user.get(user, 1) - 1)
        hub.release(slot)

    async def run(send: Send) -> None:
        out = up.out
        beat = hub.heartbeat
        ready = {
            "host": host,
            "source": source_key,
            "audit": a.ref.seq,
            "heartbeat": beat,
            "pos": up.pos if start is None else from_,
        }
        await send(_body(b"retry: 3000\n" + _event("ready", ready)))
        last_beat = time.monotonic()
        viewer.send = send  # from now on a flush may send to this viewer directly
        while True:
            viewer.wake.clear()
            hub.keep_counted()
            if viewer.failure is not None:
                raise viewer.failure
            if viewer.inflight is not None:
                # A flush's send that had to wait: the browser reads slowly. Its lines
                # gather in the ring meanwhile and go out below as one event.
                await Resume(*viewer.inflight)
                viewer.inflight = None
                last_beat = time.monotonic()
            if viewer.revoked is not None:
                state["reason"] = viewer.revoked
                await send(_body(_event("end", {"reason": viewer.ended, "retry": False})))
                return
            now = time.monotonic()
            if out.behind(viewer):
                # Behind the caught-up viewers: its own event, at most one per spacing.
                gap_s = viewer.last_sent + out.spacing() - now
                if gap_s > 0:
                    await asyncio.sleep(gap_s)
                    continue  # (what arrived meanwhile goes out with it)
                got = out.take(viewer)
                if got is not None:
                    payload, count = render(*got)
                    viewer.lines += count
                    viewer.bytes += len(payload)
                    viewer.last_sent = last_beat = now
                    await send(_body(payload))
                    continue
            if viewer.ended is not None and viewer.cursor >= out.end:
                state["reason"] = viewer.ended
                await send(_body(_event("end", {"reason": viewer.ended, "retry": viewer.retry})))
                return
            last_beat = max(last_beat, viewer.last_sent)
            if now - last_beat >= beat:
                # A beat only while the worker is heard from: a hung worker or a dead
                # connection shows as "stalled" in the browser, not as LIVE.
                if up.alive(now, beat):
                    await send(_body(_event("beat", {"pos": up.pos})))
                else:
                    await send(_body(b": keep-alive\n\n"))  # proxies must not close it
                last_beat = now
                continue
            viewer.idle = True  # a flush may now send to it directly
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(last_beat + beat - now):
                    await viewer.wake.wait()
            viewer.idle = False

    return _EventStream(run, cleanup)


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}
