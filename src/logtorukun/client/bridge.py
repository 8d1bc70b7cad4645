"""The client side of the gate's bridge: many requests over one SSH channel.

sshd allows `MaxSessions` (10 by default) channels per connection, and every one-shot
request costs a channel and a gate process start (~13 ms of Python). The bridge is one
long-lived gate process (`SSH_ORIGINAL_COMMAND=bridge`) that takes framed requests
(`logtorukun.gate.protocol`) and answers each with DATA chunks and an END; requests are
told apart by id, so follows, greps and tails run side by side and cancelling one stops
only that one. The gate parses, checks, limits and audits each request exactly like a
one-shot command.

Back-pressure: the gate sends at most `window` bytes per request until this side grants
more credit, and credit is granted only as the caller reads, so unread data here is
bounded per request and a stalled reader never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncssh

from ..gate.protocol import (
    CANCEL,
    CREDIT,
    CREDIT_BODY,
    DATA,
    END,
    HEADER,
    HELLO,
    MAX_FRAME,
    MAX_REQUEST,
    POS,
    PROTOCOL_VERSION,
    REQUEST,
    WINDOW,
    pack,
)
from .errors import ClientError, ConnectionLost, GateRefused, ProtocolError, error_for_exit
from .stream import Position, Status, Stream, gate_reason

MAX_IN_FLIGHT = 512  # requests per bridge; the gate accepts up to 1024 streams
_STDERR_CAP = 4096


class _FrameError(Exception):
    pass


class Frames:
    """Incremental frame parser for the client: DATA payloads pass through as they come.

    SSH delivers at most a packet (32 KiB) at a time, so a 64 KiB DATA frame arrives in
    pieces. DATA is opaque bytes to the reader, so each piece is handed on as soon as it
    arrives (a whole packet of payload without even a copy) instead of being joined
    first; other frames (HELLO, END) are small and returned whole. This is about a fifth
    of a bridge's streaming throughput compared with `protocol.FrameReader`, which
    copies each byte several times (fine for the gate's small requests).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._head = b""  # a header split across deliveries
        self._left = 0  # payload bytes of the current frame still to come
        self._ftype = 0
        self._rid = 0
        self._parts: list[bytes] = []  # pieces of a non-DATA payload

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        pos, n, hsize = 0, len(data), HEADER.size
        while pos < n:
            if self._left:
                take = min(self._left, n - pos)
                piece = data if take == n else data[pos : pos + take]
                pos += take
                self._left -= take
                if self._ftype == DATA:
                    out.append((DATA, self._rid, piece))
                else:
                    self._parts.append(piece)
                    if not self._left:
                        out.append((self._ftype, self._rid, b"".join(self._parts)))
                        self._parts = []
                continue
            if self._head or n - pos < hsize:
                take = min(hsize - len(self._head), n - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) < hsize:
                    break
                length, ftype, rid = HEADER.unpack(self._head)
                self._head = b""
            else:
                length, ftype, rid = HEADER.unpack_from(data, pos)
                pos += hsize
            if length > self._max:
                raise _FrameError(f"frame of {length} bytes is over the {self._max} limit")
            if n - pos >= length:
                out.append((ftype, rid, data[pos : pos + length]))
                pos += length
            else:
                self._ftype, self._rid, self._left = ftype, rid, length
        return out


class BridgeStream(Stream):
    """One request inside a bridge."""

    def __init__(self, bridge: BridgeSession, rid: int, command: str) -> None:
        super().__init__(bridge.host, command)
        self.bridge = bridge
        self.rid = rid
        self._ungranted = 0

    def on_consumed(self, n: int) -> None:
        if self.done:
            return
        self._ungranted += n
        if self._ungranted >= self.bridge.grant_step:
            self.bridge._send(pack(CREDIT, self.rid, CREDIT_BODY.pack(self._ungranted)))
            self._ungranted = 0

    def on_cancel(self) -> None:
        # The id stays registered until the gate's END, so late DATA is dropped, not
        # mistaken for a new request's.
        self.bridge._send(pack(CANCEL, self.rid))


class _BridgeChannel(asyncssh.SSHClientSession[bytes]):
    def __init__(self, bridge: BridgeSession) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            b = self.bridge
            if len(b.stderr) < _STDERR_CAP:
                b.stderr += data[: _STDERR_CAP - len(b.stderr)]
        else:
            self.bridge._feed(data)

    def exit_status_received(self, status: int) -> None:
        self.bridge.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.bridge.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.lost(exc)


class BridgeSession:
    """A running bridge: open with `BridgeSession.open(conn, host)`, then `start()` requests."""

    def __init__(self, host: str, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.host = host
        self.hello: dict[str, Any] = {}
        self.window = WINDOW
        self.grant_step = WINDOW // 4
        self.stderr = b""
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.requests = 0
        self.last_active = time.monotonic()  # a request ended (for the pool's idle close)
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._reader = Frames()
        self._streams: dict[int, BridgeStream] = {}
        self._next_rid = 1
        self._slots = asyncio.Semaphore(max_in_flight)
        self._hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: ClientError | None = None
        self._out: list[bytes] = []

    @classmethod
    async def open(
        cls,
        conn: asyncssh.SSHClientConnection,
        host: str,
        *,
        timeout: float,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> BridgeSession:
        """Start the gate's bridge on `conn` and wait for its HELLO."""
        bridge = cls(host, max_in_flight)
        chan, _ = await conn.create_session(lambda: _BridgeChannel(bridge), "bridge", encoding=None)
        bridge._chan = chan
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(bridge._hello)
        except TimeoutError:
            bridge.close()
            raise ProtocolError(host, f"the bridge sent no HELLO within {timeout:g} s") from None
        return bridge

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    async def start(
        self, command: str, via: dict[str, Any] | None = None, *, positions: bool = False
    ) -> BridgeStream:
        """Send one request; the returned stream yields its output (and, for a follow
        with `positions`, where it stands in its file: `Stream.read_item`)."""
        if self._error is not None:
            raise self._error
        body: dict[str, Any] = {"command": command}
        if via:
            body["via"] = via
        if positions:
            body["positions"] = True
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        if len(payload) > MAX_REQUEST:
            raise GateRefused(self.host, 2, f"request of {len(payload)} bytes is too large")
        await self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error
        rid = self._next_rid
        while rid in self._streams:  # after 2**32 requests, skip a still-running id
            rid = rid + 1 if rid < 0xFFFFFFFF else 1
        self._next_rid = rid + 1 if rid < 0xFFFFFFFF else 1
        stream = BridgeStream(self, rid, command)
        self._streams[rid] = stream
        self.requests += 1
        self._send(pack(REQUEST, rid, payload))
        return stream

    def _send(self, frame: bytes) -> None:
        """Queue a frame; frames queued in one loop turn leave in one SSH packet write.

        500 requests started together cost one encryption and one syscall here, and one
        read in the gate, instead of 500 of each.
        """
        if self._error is not None:
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        chan = self._chan
        if chan is None or self._error is not None or not out:
            return
        try:
            chan.write(b"".join(out) if len(out) > 1 else out[0])
        except (OSError, asyncssh.Error) as exc:
            self._fail(ConnectionLost(self.host, f"bridge write failed: {exc}"))

    # ------------------------------------------------------------------ incoming

    def _feed(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except _FrameError as exc:
            self._fail(ProtocolError(self.host, f"bridge framing: {exc}"))
            return
        streams = self._streams
        for ftype, rid, payload in frames:
            if ftype == DATA:
                stream = streams.get(rid)
                if stream is not None and payload:
                    stream.deliver(payload)
            elif ftype == POS:
                stream = streams.get(rid)
                if stream is None:
                    continue
                try:
                    stream.deliver_position(_position(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    self._fail(ProtocolError(self.host, f"bad POS frame: {exc}"))
                    return
            elif ftype == END:
                stream = streams.pop(rid, None)
                if stream is None:
                    continue
                self.last_active = time.monotonic()
                self._slots.release()
                try:
                    stream.finish(_status(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    stream.finish(None, ProtocolError(self.host, f"bad END frame: {exc}"))
            elif ftype == HELLO and not self._hello.done():
                try:
                    self._on_hello(payload)
                except (ValueError, TypeError, ClientError) as exc:
                    err = (
                        exc
                        if isinstance(exc, ClientError)
                        else ProtocolError(self.host, f"bad HELLO frame: {exc}")
                    )
                    self._fail(err)
                    return
            else:
                self._fail(ProtocolError(self.host, f"unexpected bridge frame type {ftype}"))
                return

    def _on_hello(self, payload: bytes) -> None:
        hello = json.loads(payload)
        if not isinstance(hello, dict):
            raise ValueError("not an object")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                self.host,
                f"gate speaks bridge protocol {hello.get('protocol')!r},"
                f" this client {PROTOCOL_VERSION}: update one of them",
            )
        self.hello = hello
        self.window = int(hello.get("window", WINDOW))
        self.grant_step = max(1, self.window // 4)
        self._hello.set_result(None)

    def lost(self, exc: Exception | None) -> None:
        """The channel closed: every running request fails, the next call reopens."""
        if self._error is not None:
            return
        reason = gate_reason(self.stderr)
        if exc is not None:
            err: ClientError = ConnectionLost(self.host, f"connection lost: {exc}")
        elif self.exit_signal:
            err = ConnectionLost(self.host, f"the bridge was killed by SIG{self.exit_signal}")
        elif self.exit_status is not None and self.exit_status >= 128:
            # The user's shell reports a gate killed by a signal as 128 + N ("Killed").
            why = f": {reason}" if reason else ""
            err = ConnectionLost(self.host, f"the bridge died (exit {self.exit_status}{why})")
        elif self.exit_status not in (None, 0) and reason:
            err = error_for_exit(self.host, int(self.exit_status or 0), reason)
        elif not self._hello.done():
            got = f" (exit {self.exit_status}{', ' + reason if reason else ''})"
            err = ProtocolError(
                self.host, f"the worker's command ended before its HELLO{got}: not a gate bridge"
            )
        elif reason:
            err = ConnectionLost(self.host, f"the bridge ended: {reason}")
        else:
            err = ConnectionLost(self.host, "the bridge ended (worker restarted or went away)")
        self._fail(err)

    def _fail(self, err: ClientError) -> None:
        if self._error is None:
            self._error = err
        if not self._hello.done():
            self._hello.set_exception(err)
            self._hello.exception()  # retrieved: no "never retrieved" warning
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._slots.release()
            stream.finish(None, err)
        chan = self._chan
        if chan is not None:
            with contextlib.suppress(Exception):
                chan.close()

    def close(self) -> None:
        """End the session: running requests fail with ConnectionLost."""
        self._fail(ConnectionLost(self.host, "the bridge was closed by the client"))


def _position(payload: bytes) -> Position:
    body = json.loads(payload)
    return Position(
        int(body["ino"]), int(body["off"]), int(body["tag"]), str(body.get("gap") or "")
    )


def _status(payload: bytes) -> Status:
    return Status.from_json(payload)
