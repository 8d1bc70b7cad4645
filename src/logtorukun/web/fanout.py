"""One follow's lines, fanned out to every viewer from one shared ring, encoded once.

Why: with 200 viewers of one file, each line becomes 200 socket writes. Giving every
viewer a queue and a task of its own meant 200 task wake-ups, 200 JSON joins and 200
trips through the ASGI stack per line, so the last viewer served waited for the 199
before it (p50 11 ms at 10 lines/s; bench/follow.py). Here:

- The upstream appends lines (JSON-encoded once, with their positions) to one ring of
  the last `BACKLOG` entries; a viewer is only a cursor into it, so a viewer that falls
  behind costs no memory: once the ring has moved past its cursor, the lines in between
  are counted as `dropped` and it goes on from the oldest line still held.
- A flush renders what arrived since the last one into SSE bytes ONCE and hands the
  same bytes to every viewer that is caught up and idle, in one pass with no task
  switch: the viewer's ASGI `send` is stepped directly (`_deliver`) and finishes
  synchronously unless the viewer's socket is full.
- A viewer whose socket is full (a slow browser) has that one send finished by its own
  task (`Resume`); meanwhile it is skipped, and afterwards it catches up from its cursor
  on its own, with what arrived meanwhile as one event. It never holds up the others
  and never holds more than one event.
- When idle, a flush runs on the next event-loop turn; while busy, at most one flush per
  `spacing()` (5 ms, longer with many viewers: `EVENTS_PER_SECOND` for all viewers of
  one follow together), so lines arriving in between go out together.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Generator
from typing import Any

from starlette.types import Send

BACKLOG = 5000  # entries the ring holds: how far behind a viewer may be before losing lines
BATCH_SECONDS = 0.005  # busy: at most one flush this often (idle: at once)
# ... and at most this many events a second for all viewers of one follow together (200
# viewers: one flush per 5 ms): an event to a caught-up viewer is one socket write of
# bytes rendered once (about 10 µs), so the budget only bounds the write syscalls.
EVENTS_PER_SECOND = 40000
# ... and, whatever the budget, the gap between flushes is at least this many times the
# last flush's own duration (wall clock): on a machine short of CPU a flush takes longer,
# so flushes grow rarer and carry more lines each, instead of the fan-out falling behind.
COST_FACTOR = 2.0
MAX_BATCH = 2000  # lines in one `lines` event

# A ring entry: (JSON-encoded line, or None for a gap; position token "INO:OFF:TAG" just
# past this line if known; the gap's reason).
Entry = tuple[str | None, str | None, str | None]


class Viewer:
    """One browser following: a cursor into its fan-out's ring, and its state."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.cursor = 0  # the sequence number of the next entry this viewer needs
        self.dropped_total = 0
        self.wake = asyncio.Event()
        self.ended: str | None = None  # reason, once the upstream has ended
        self.retry = True  # may the browser start again from its last position?
        self.revoked: str | None = None  # the audit reason, once credentials failed
        self.lines = 0
        self.bytes = 0
        self.last_sent = 0.0  # monotonic time of the last `lines` event
        # Set by the viewer's task: its ASGI send once the stream has started, and
        # whether it is parked waiting for `wake` (only then may a flush send for it).
        self.send: Send | None = None
        self.idle = False
        # A send a flush started that had to wait (the socket is full): (coroutine,
        # what it waits on), finished by the viewer's task; or what that send raised.
        self.inflight: tuple[Coroutine[Any, Any, None], Any] | None = None
        self.failure: Exception | None = None

    def end(self, reason: str, retry: bool) -> None:
        self.ended = reason
        self.retry = retry
        self.wake.set()

    def revoke(self, reason: str, shown: str) -> None:
        """Credentials no longer valid (recheck.py): nothing more is sent, not even
        lines already waiting; the browser is told `shown` and must not retry."""
        self.revoked = reason
        self.end(shown, retry=False)


class Fanout:
    """The ring of one follow's recent entries and the viewers reading it."""

    def __init__(self) -> None:
        self.viewers: set[Viewer] = set()
        self._ring: list[Entry | None] = [None] * BACKLOG
        self.end = 0  # sequence number of the next entry appended
        self.flushed = 0  # entries before this were offered to the caught-up viewers
        self._last_flush = 0.0
        self._cost = 0.0  # how long the last flush took
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None

    @property
    def base(self) -> int:
        """The oldest sequence number still in the ring."""
        return max(0, self.end - BACKLOG)

    def spacing(self) -> float:
        budget = len(self.viewers) / EVENTS_PER_SECOND
        return max(BATCH_SECONDS, budget, COST_FACTOR * self._cost)

    def entries(self, a: int, b: int) -> list[Entry]:
        """Entries [a, b) (a >= base)."""
        n = BACKLOG
        i, j = a % n, b % n
        if b <= a:
            part: list[Entry | None] = []
        elif i < j:
            part = self._ring[i:j]
        else:
            part = self._ring[i:] + self._ring[:j]
        return part  # type: ignore[return-value]  # every slot in [base, end) is filled

    def add(self, entries: list[Entry]) -> None:
        self.end += max(0, len(entries) - BACKLOG)  # a burst longer than the ring: lost
        for e in entries[-BACKLOG:]:
            self._ring[self.end % BACKLOG] = e
            self.end += 1
        self._schedule()

    def after(self, token: str) -> int | None:
        """The sequence number just after the entry ending at position `token`, or None
        if the ring does not hold it."""
        for seq in range(self.end - 1, self.base - 1, -1):
            entry = self._ring[seq % BACKLOG]
            if entry is not None and entry[1] == token:
                return seq + 1
        return None

    def _schedule(self) -> None:
        if self._timer is not None or self.end <= self.flushed:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_flush + self.spacing() - time.monotonic()
        if delay > 0:
            self._timer = loop.call_later(delay, self._flush)
        else:  # idle: the next event-loop turn, so chunks read in this one go together
            self._timer = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._timer = None
        a, b = self.flushed, min(self.end, self.flushed + MAX_BATCH)
        self.flushed = b
        self._last_flush = now = time.monotonic()
        payload, count = render(self.entries(a, b), 0) if a >= self.base else (b"", 0)
        for v in list(self.viewers):
            if v.revoked is not None:
                continue
            if v.send is None:  # not started yet, or a reader with a loop of its own
                if v.cursor < b:
                    v.wake.set()
                continue
            if not v.idle:
                continue  # busy: it catches up itself once its send is done
            if v.cursor == a and payload and v.send is not None:
                v.cursor = b
                v.lines += count
                v.bytes += len(payload)
                v.last_sent = now
                _deliver(v, payload)
                if v.ended is not None:
                    v.wake.set()  # its `end` event goes out after these lines
            elif v.cursor < b:
                v.wake.set()  # behind (or dropped lines): it sends its own batch
        self._cost = time.monotonic() - now
        self._schedule()

    def behind(self, v: Viewer) -> bool:
        """Has `v` lines (or drops) to be told that the caught-up viewers already got?"""
        return v.cursor < self.flushed or v.cursor < self.base

    def take(self, v: Viewer) -> tuple[list[Entry], int] | None:
        """The viewer's own next entries, from its cursor up to the last flush (at most
        MAX_BATCH), and how many it lost; None if it has everything flushed so far."""
        dropped = 0
        if v.cursor < self.base:
            dropped = self.base - v.cursor
            v.cursor = self.base
            v.dropped_total += dropped
        b = min(self.flushed, v.cursor + MAX_BATCH)
        if b <= v.cursor and not dropped:
            return None
        entries = self.entries(v.cursor, b)
        v.cursor = max(v.cursor, b)
        return entries, dropped


def render(entries: list[Entry], dropped: int, src: int | None = None) -> tuple[bytes, int]:
    """SSE events for `entries` in order: runs of lines as `lines` events ("dropped" on
    the first, "pos" after the last line that has one), gaps as `gap` events; `src`
    (the merged view's source number) first in each if given."""
    parts: list[str] = []
    lines: list[str] = []
    pos: str | None = None
    count = 0
    for line, p, gap in entries:
        if line is not None:
            lines.append(line)
            if p is not None:
                pos = p
            if len(lines) < MAX_BATCH:
                continue
        if lines or dropped:
            parts.append(_lines_event(lines, dropped, pos, src))
            count += len(lines)
            lines, pos, dropped = [], None, 0
        if line is None:
            head = {} if src is None else {"src": src}
            parts.append(event("gap", {**head, "reason": gap, "pos": p}))
    if lines or dropped:
        parts.append(_lines_event(lines, dropped, pos, src))
        count += len(lines)
    return "".join(parts).encode(), count


def _lines_event(lines: list[str], dropped: int, pos: str | None, src: int | None) -> str:
    head = f'"src":{src},' if src is not None else ""
    tail = f',"pos":"{pos}"' if pos is not None else ""
    data = f'{{{head}"lines":[{",".join(lines)}],"dropped":{dropped}{tail}}}'
    return f"event: lines\ndata: {data}\n\n"


def event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _deliver(v: Viewer, payload: bytes) -> None:
    """Send `payload` to `v` from outside its task: step its ASGI send, which completes
    at once unless the socket is full; then its task finishes it (`Resume`)."""
    assert v.send is not None
    coro = v.send({"type": "http.response.body", "body": payload, "more_body": True})
    assert isinstance(coro, Coroutine)  # an ASGI send is an `async def`
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception as exc:  # the client went away mid-write, say: its task ends
        v.failure = exc
    else:
        v.inflight = (coro, waiting)
    v.idle = False
    v.wake.set()


class Resume:
    """Await the rest of a coroutine that was started outside any task and suspended
    (`_deliver`): what it waits on is handed to the awaiting task, as `await` would."""

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro, self.waiting = coro, waiting

    def __await__(self) -> Generator[Any, None, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # cancellation of the awaiting task: pass it on
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    return
