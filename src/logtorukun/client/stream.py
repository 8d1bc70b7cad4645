"""One request's output as the caller sees it, whether it came over a bridge or a channel.

A `Stream` is an async iterator of byte chunks with an end `Status` (the gate's exit code,
reason, counts). Data is pulled: a chunk is only taken from the network side when the
caller asks for it, and the network side is told to send more only then, so a slow
reader slows the worker down instead of growing a buffer here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from ..gate.vocabulary import Status as Status  # re-exported: the client's API
from .errors import ClientError, ConnectionLost, error_for_exit


@dataclass(frozen=True)
class Position:
    """Where a follow stands in its file: (inode, offset) just past the complete lines
    delivered before it, and a tag of the bytes before that offset (inodes are reused);
    `gap` says what the gate could not read, and why."""

    ino: int
    off: int
    tag: int
    gap: str = ""

    @property
    def start(self) -> tuple[int, int, int]:
        """What `Tail(..., start=)` takes (gate/vocabulary.py)."""
        return (self.ino, self.off, self.tag)


class Stream:
    """Chunks of one request; iterate, then read `status`. Cancel by `aclose()`.

    Iteration raises the request's error (`GateExitError` subclass, `ConnectionLost`, ...)
    when it ends with one; a limit (exit 5) is not an error here: the stream ends and
    `status.truncated` says so.
    """

    def __init__(self, host: str, command: str) -> None:
        self.host = host
        self.command = command
        self.status: Status | None = None
        self._chunks: deque[bytes | Position] = deque()
        self._buffered = 0
        self._error: ClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False  # the caller is done (cancelled or read to the end)
        self.received = 0  # bytes of data that arrived (for tests and metrics)
        self.max_buffered = 0  # high-water mark of data held here, unread
        self.position: Position | None = None  # the last position read past (positions=True)

    # ------------------------------------------------------------------ network side
    # Called by the transport that owns this stream (bridge.py, oneshot.py).

    def deliver(self, data: bytes) -> None:
        """A chunk of the request's output arrived."""
        if self._closed:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.received += len(data)
        self.max_buffered = max(self.max_buffered, self._buffered)
        self._wake()

    def deliver_position(self, pos: Position) -> None:
        """The gate's position after the data delivered so far (positions=True)."""
        if self._closed:
            return
        self._chunks.append(pos)
        self._wake()

    def finish(self, status: Status | None, error: ClientError | None = None) -> None:
        """The request ended: with the gate's status, or with `error` (first call wins)."""
        if self.status is not None or self._error is not None:
            return
        if status is not None and error is None and not status.ok:
            if status.exit >= 128:  # killed by a signal (the shell's 128 + N), not refused
                why = f": {status.reason}" if status.reason else ""
                error = ConnectionLost(self.host, f"the gate died (exit {status.exit}{why})")
            else:
                error = error_for_exit(self.host, status.exit, status.reason)
        self.status = status
        self._error = error
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    @property
    def done(self) -> bool:
        return self.status is not None or self._error is not None

    # ------------------------------------------------------------------ hooks

    def on_consumed(self, n: int) -> None:
        """The caller took `n` bytes: the transport may let more through."""

    def on_cancel(self) -> None:
        """The caller gave up before the end: tell the worker to stop."""

    # ------------------------------------------------------------------ caller side

    async def read(self) -> bytes:
        """The next chunk, or b"" at the end; raises the request's error if it failed.
        Positions passed on the way update `position`."""
        while True:
            item = await self.read_item()
            if isinstance(item, bytes):
                return item
            self.position = item

    async def read_item(self) -> bytes | Position:
        """The next chunk or position, in the order the gate sent them; b"" at the end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                if isinstance(data, Position):
                    return data
                self._buffered -= len(data)
                self.on_consumed(len(data))
                return data
            if self._error is not None:
                self._closed = True
                raise self._error
            if self.status is not None:
                self._closed = True
                return b""
            if self._closed:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            await self._waiter

    async def read_all(self) -> bytes:
        """Everything until the end (bounded by the gate's max_bytes)."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def lines(self) -> AsyncIterator[bytes]:
        """Whole lines (with their newline; the last may lack one)."""
        rest = b""
        while chunk := await self.read():
            data = rest + chunk if rest else chunk
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:  # not splitlines: a \r is not an end
                yield data[start : nl + 1]
                start = nl + 1
            rest = data[start:]
        if rest:
            yield rest

    async def aclose(self) -> None:
        """Stop reading: cancels the request if it is still running (only this one)."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        if not self.done:
            self.on_cancel()
        self._wake()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "running" if not self.done else f"ended {self.status or self._error!r}"
        return f"<{type(self).__name__} {self.host} {self.command!r} {state}>"


def gate_reason(stderr: bytes) -> str:
    """The gate's last `logtorukun-gate: REASON` line on stderr, without the prefix."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1]
    prefix = "logtorukun-gate:"
    return line[len(prefix) :].strip() if line.startswith(prefix) else line
