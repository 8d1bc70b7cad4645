"""Live follow over Server-Sent Events, with one upstream per (host, source).

Why shared: two hundred people watching one log during an incident must not open two
hundred `tail -F` sessions on the worker (its `max_concurrent` would refuse most of
them). The first viewer starts the upstream; the last one leaving stops it.

Back-pressure without letting one slow browser stall the others: each viewer has a
bounded backlog (`BACKLOG` lines). A line reaching an idle viewer goes out at once (the
next event-loop turn); while a viewer is busy, lines gather into one event at most every
`BATCH_SECONDS` (longer with many viewers: `EVENTS_PER_SECOND` for all viewers of one
source together), and a slow browser (whose socket is full, so the send waits) gets
everything that arrived meanwhile as one event. A viewer whose backlog is full loses
the oldest lines and is told how many (`dropped`), instead of the server buffering
without bound. Every viewer has its own follow_start/follow_end audit records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..client.stream import Position
from ..config import HostConfig
from ..gate.protocol import POS_EVERY
from .access import FOLLOW, Source
from .api import ContainerQ, PathQ, UnitQ, worker_failed
from .context import ApiError, Ctx, Server
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

BACKLOG = 5000  # lines a viewer may be behind before the oldest are dropped
REPLAY = 5000  # lines an upstream keeps, with positions, for viewers joining from one
BATCH_SECONDS = 0.005  # busy: at most one event per viewer this often (idle: at once)
# ... and, with many viewers of one source, at most this many events a second for all of
# them together (200 viewers: one event each per 25 ms): past that the server would
# spend its time on per-event overhead and every viewer would fall behind.
EVENTS_PER_SECOND = 8000
MAX_BATCH = 2000
HEARTBEAT = 15.0
MAX_LINE = 64 * 1024  # a longer "line" is cut: one write must not become one huge event
MAX_PENDING = 1 << 20  # bytes held waiting for their position before going out without
TAG_BYTES = 64  # a position's tag: CRC32 of the file's 64 bytes before it (as the gate's)

# A backlog entry: (JSON-encoded line, or None for a gap; position token "INO:OFF:TAG"
# just past this line if known; the gap's reason).
Entry = tuple[str | None, str | None, str | None]


class Viewer:
    """One browser following; holds its own bounded backlog of JSON-encoded lines."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.backlog: deque[Entry] = deque(maxlen=BACKLOG)
        self.dropped = 0
        self.dropped_total = 0
        self.wake = asyncio.Event()
        self.ended: str | None = None  # reason, once the upstream has ended
        self.retry = True  # may the browser start again from its last position?
        self.revoked: str | None = None  # the audit reason, once credentials failed
        self.lines = 0
        self.bytes = 0

    def push(self, entries: list[Entry]) -> None:
        if self.revoked is not None:
            return
        # The deque's maxlen drops the oldest lines: the newest are what a live view is for.
        over = len(self.backlog) + len(entries) - BACKLOG
        if over > 0:
            self.dropped += over
        self.backlog.extend(entries)
        self.wake.set()

    def end(self, reason: str, retry: bool) -> None:
        self.ended = reason
        self.retry = retry
        self.wake.set()

    def revoke(self, reason: str, shown: str) -> None:
        """Credentials no longer valid (recheck.py): nothing more is sent, not even
        lines already queued; the browser is told `shown` and must not retry."""
        self.revoked = reason
        self.backlog.clear()
        self.dropped = 0
        self.end(shown, retry=False)


class Upstream:
    """One follow on a worker, fanned out to every viewer of that (host, source).

    A file follow asks the gate for positions: lines are held until the position after
    them arrives (right after their data), so every line sent to a browser can carry
    the exact (inode, offset) to continue from after a drop. The last `REPLAY` lines are
    kept with their positions: a viewer that joins from a position among them is
    replayed the rest and then shares this upstream.
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
        self.viewers: set[Viewer] = set()
        self.lines = 0
        self.bytes = 0
        self.positions = source.kind == "file"
        # (inode, offset) after the last line fanned out, its token, and the file's last
        # TAG_BYTES bytes before that offset when known (to tag each line's position)
        self.cur: tuple[int, int] | None = None if start is None else start[:2]
        self.pos: str | None = None if start is None else _token(*start)
        self.recent: bytes | None = None
        self.ring: deque[Entry] = deque(maxlen=REPLAY)
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

    def _fan(self, entries: list[Entry]) -> None:
        # JSON-encoded once here, not once per viewer: 200 viewers cost 200 joins.
        self.lines += len(entries)
        self.ring.extend(entries)
        for v in self.viewers:
            v.push(entries)

    def replay_after(self, token: str) -> list[Entry] | None:
        """What a viewer that has everything up to `token` still needs, or None if this
        upstream cannot tell (the position is not among its recent lines)."""
        if token == self.pos:
            return []
        for i in range(len(self.ring) - 1, -1, -1):
            if self.ring[i][1] == token:
                return list(self.ring)[i + 1 :]
        return None

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
            # status for the first viewer rather than an event after a 200.
            await self.server.workers.read(host, ReadSpec("tail", source, lines=1), via)
            up = self._live(key)
            if up is None:
                up = Upstream(self, host, source, via, start)
                self.upstreams[key] = up
                up.viewers.add(viewer)
                return up
        if start is not None:
            replay = up.replay_after(_token(*start))
            if replay is None:
                up = Upstream(self, host, source, via, start)
                self.private.add(up)
            elif replay:
                viewer.push(replay)
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
    from_: FromQ = None,
) -> StreamingResponse:
    """Events: `ready` ({"heartbeat": seconds, "pos"}), `lines` ({"lines": [...],
    "dropped": N, "pos": "INO:OFF" after the last line}), `gap` ({"reason"}: lines the
    worker could not read), `beat` (every `heartbeat` seconds while the worker is
    heard from; none for two intervals means stalled), `end` ({"reason", "retry"}).
    New lines only: get the recent ones with `tail` first and pass its `pos` as `from`
    to lose nothing in between; after a drop, pass the last `pos` received."""
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
        """Once per viewer: from the generator's end, or (if the client went away before
        the stream started) from the response's background task."""
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

    async def events() -> AsyncIterator[bytes]:
        try:
            beat = hub.heartbeat
            yield b"retry: 3000\n" + _event(
                "ready",
                {
                    "host": host,
                    "source": source_key,
                    "audit": a.ref.seq,
                    "heartbeat": beat,
                    "pos": up.pos if start is None else from_,
                },
            )
            last_beat = last_sent = time.monotonic()
            while True:
                hub.keep_counted()
                if not viewer.wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(beat):
                            await viewer.wake.wait()
                viewer.wake.clear()
                if viewer.revoked is not None:
                    state["reason"] = viewer.revoked
                    yield _event("end", {"reason": viewer.ended, "retry": False})
                    return
                backlog = viewer.backlog
                if backlog and backlog[0][0] is None:
                    _, pos, gap = backlog.popleft()
                    yield _event("gap", {"reason": gap, "pos": pos})
                    viewer.wake.set()
                    continue
                if backlog or viewer.dropped:
                    # Idle: out at once. Busy (an event went out less than BATCH_SECONDS
                    # ago): wait out the gap, gathering what arrives meanwhile.
                    spacing = max(BATCH_SECONDS, len(up.viewers) / EVENTS_PER_SECOND)
                    gap_s = last_sent + spacing - time.monotonic()
                    if gap_s > 0:
                        await asyncio.sleep(gap_s)
                    batch: list[str] = []
                    pos = None
                    while backlog and len(batch) < MAX_BATCH and backlog[0][0] is not None:
                        line, p, _ = backlog.popleft()
                        batch.append(line)  # type: ignore[arg-type]
                        if p is not None:
                            pos = p
                    tail = f',"pos":"{pos}"' if pos is not None else ""
                    payload = (
                        f'event: lines\ndata: {{"lines":[{",".join(batch)}],'
                        f'"dropped":{viewer.dropped}{tail}}}\n\n'
                    ).encode()
                    viewer.dropped_total += viewer.dropped
                    viewer.dropped = 0
                    viewer.lines += len(batch)
                    viewer.bytes += len(payload)
                    # A slow browser makes this wait (the transport's flow control):
                    # its lines gather in the backlog meanwhile and go out as one event.
                    yield payload
                    last_beat = last_sent = time.monotonic()
                    if backlog:
                        viewer.wake.set()
                    continue
                if viewer.ended is not None:
                    state["reason"] = viewer.ended
                    yield _event("end", {"reason": viewer.ended, "retry": viewer.retry})
                    return
                now = time.monotonic()
                if now - last_beat >= beat:
                    # A beat only while the worker is heard from: a hung worker or a dead
                    # connection shows as "stalled" in the browser, not as LIVE.
                    if up.alive(now, beat):
                        yield _event("beat", {"pos": up.pos})
                    else:
                        yield b": keep-alive\n\n"  # proxies must not close the stream
                    last_beat = now
        finally:
            await cleanup()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
        background=BackgroundTask(cleanup),
    )
