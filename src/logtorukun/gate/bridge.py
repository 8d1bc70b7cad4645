"""The persistent gate session: many requests multiplexed over one SSH channel.

Started as the forced command with `SSH_ORIGINAL_COMMAND=bridge`. Each REQUEST frame goes
through `runner.serve`, exactly like a one-shot command (same parser, policy, limits and
audit records). Quick bounded reads (tail -n, range, sources) run inline on the reading
thread — handing them to a thread would cost more than the read; follows, greps and
child processes run on their own threads. Per-request credit keeps memory bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from . import GATE_VERSION, grammar
from .audit import now_iso
from .errors import Exit, GateError
from .output import CancelFlag, LimitReached, Output
from .protocol import (
    CANCEL,
    CREDIT,
    CREDIT_BODY,
    DATA,
    END,
    HEADER,
    HELLO,
    MAX_DATA,
    MAX_REQUEST,
    POS,
    PROTOCOL_VERSION,
    REQUEST,
    WINDOW,
    FrameError,
    FrameReader,
    pack,
)
from .runner import Context, Result, is_quick, serve
from .vocabulary import Request, Status

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    from typing import Any

MAX_STREAMS = 1024


class _Writer:
    """Serialises frames onto stdout; one write per frame so frames never interleave."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def send(
        self, ftype: int, rid: int, payload: bytes | memoryview = b"", before: bytes = b""
    ) -> None:
        """Write one frame, preceded by `before` (whole frames), in one writev(): the
        payload is not copied into a frame first (streaming throughput)."""
        head = HEADER.pack(len(payload), ftype, rid)
        parts = [before, head, payload] if before else [head, payload]
        total = len(before) + len(head) + len(payload)
        with self.lock:
            if self.broken:
                raise BrokenPipeError()
            try:
                done = os.writev(self.fd, parts)
                if done < total:  # a partial write (a signal): finish it byte-exact
                    view = memoryview(b"".join(parts))[done:]
                    while view:
                        view = view[os.write(self.fd, view) :]
            except OSError:
                self.broken = True
                raise BrokenPipeError() from None


class _ServedStream:
    """One request's credit window and cancellation flag."""

    def __init__(self, rid: int, writer: _Writer) -> None:
        self.rid = rid
        self.writer = writer
        self.credit = WINDOW
        self.cond = threading.Condition()
        self.cancelled = CancelFlag()  # its set() also wakes a follow waiting on inotify
        self.thread: threading.Thread | None = None
        # A request's time limit holds while it waits for credit, too: a client that
        # never reads must not keep a concurrency slot (and a child) past max_seconds.
        self.deadline: float | None = None
        self.limit = 0.0

    def add_credit(self, n: int) -> None:
        with self.cond:
            self.credit += n
            self.cond.notify_all()

    def cancel(self) -> None:
        self.cancelled.set()
        with self.cond:
            self.cond.notify_all()

    def send_data(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self.cond:
                while self.credit <= 0 and not self.cancelled.is_set():
                    left = None if self.deadline is None else self.deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise LimitReached(
                            f"stopped after {self.limit:g} s waiting for the client to read "
                            "(time limit in the policy)"
                        )
                    self.cond.wait(left)
                if self.cancelled.is_set():
                    raise BrokenPipeError()
                n = min(self.credit, MAX_DATA, len(view))
                self.credit -= n
            self.writer.send(DATA, self.rid, view[:n])
            view = view[n:]

    def end(self, result: Result, before: bytes = b"") -> None:
        status = Status(
            exit=int(result.code),
            reason=result.reason,
            lines=result.lines,
            bytes=result.bytes,
            truncated=result.truncated,
            pos=result.position,
        )
        self.writer.send(END, self.rid, status.to_json(), before)


class BridgeServer:
    def __init__(self, ctx: Context, infd: int = 0, outfd: int = 1) -> None:
        self.ctx = ctx
        self.infd = infd
        self.writer = _Writer(outfd)
        self.streams: dict[int, _ServedStream] = {}
        self.lock = threading.Lock()

    def run(self) -> int:
        ctx = self.ctx
        ctx.mode = "bridge"
        try:
            ctx.audit.write({"ts": now_iso(), "event": "session_start", **ctx.identity})
        except GateError as exc:
            _stderr(exc.reason)
            return int(exc.code)
        lim = ctx.policy.limits
        hello = {
            "protocol": PROTOCOL_VERSION,
            "gate": GATE_VERSION,
            "window": WINDOW,
            "max_data": MAX_DATA,
            "limits": {
                "max_lines": lim.max_lines,
                "max_bytes": lim.max_bytes,
                "max_seconds": lim.max_seconds,
                "follow_max_seconds": lim.follow_max_seconds,
                "max_concurrent": lim.max_concurrent,
            },
        }
        t0 = time.monotonic()
        requests = 0
        code = 0
        try:
            self.writer.send(HELLO, 0, json.dumps(hello).encode())
            reader = FrameReader()
            while True:
                chunk = os.read(self.infd, 1 << 18)
                if not chunk:
                    break
                for ftype, rid, payload in reader.feed(chunk):
                    if ftype == REQUEST:
                        requests += 1
                        self._request(rid, payload)
                    elif ftype == CREDIT and len(payload) == CREDIT_BODY.size:
                        stream = self.streams.get(rid)
                        if stream is not None:
                            stream.add_credit(CREDIT_BODY.unpack(payload)[0])
                    elif ftype == CANCEL:
                        stream = self.streams.get(rid)
                        if stream is not None:
                            stream.cancel()
                    else:
                        raise FrameError(f"unexpected frame type {ftype}")
        except FrameError as exc:
            _stderr(f"bridge protocol error: {exc}")
            code = int(Exit.BAD_REQUEST)
        except (BrokenPipeError, ConnectionError):
            pass
        finally:
            with self.lock:
                streams = list(self.streams.values())
            for stream in streams:
                stream.cancel()
            for stream in streams:
                if stream.thread is not None:
                    stream.thread.join(timeout=5)
            # Ending the session is audited too; a failure here cannot refuse anything.
            try:
                ctx.audit.write(
                    {
                        "ts": now_iso(),
                        "event": "session_end",
                        **ctx.identity,
                        "requests": requests,
                        "duration_ms": round((time.monotonic() - t0) * 1000, 3),
                    }
                )
            except GateError as exc:
                _stderr(exc.reason)
        return code

    def _request(self, rid: int, payload: bytes) -> None:
        stream = _ServedStream(rid, self.writer)
        with self.lock:
            if rid in self.streams:
                # An END on this id would end the client's running request: the
                # client has lost track of its ids, so the session cannot go on.
                raise FrameError(f"request id {rid} is already in use")
            busy = len(self.streams) >= MAX_STREAMS
            if not busy:
                self.streams[rid] = stream
        if busy:
            stream.end(Result(Exit.BUSY, f"too many streams (at most {MAX_STREAMS})"))
            return
        try:
            if len(payload) > MAX_REQUEST:
                raise ValueError(f"request of {len(payload)} bytes is over {MAX_REQUEST}")
            body = json.loads(payload)
            command = body["command"]
            via = body.get("via")
            positions = body.get("positions", False)
            if not isinstance(command, str) or not (via is None or isinstance(via, dict)):
                raise ValueError("command must be a string, via an object")
            if not isinstance(positions, bool):
                raise ValueError("positions must be true or false")
        except (ValueError, KeyError, TypeError) as exc:
            self._finish(stream, Result(Exit.BAD_REQUEST, f"malformed request: {exc}"))
            return
        # Parsed once, here: serve() gets the request (or the refusal) as it is.
        parsed: Request | GateError
        try:
            parsed = grammar.parse(command)
        except GateError as exc:
            parsed = exc  # refused by serve() below, inline, with its audit record
        if isinstance(parsed, GateError) or is_quick(parsed):
            self._inline(stream, command, parsed, via)
        else:
            t = threading.Thread(
                target=self._threaded,
                args=(stream, command, parsed, via, positions),
                daemon=True,
            )
            stream.thread = t
            t.start()

    def _output(self, sink: Any, stream: _ServedStream, positions: bool = False) -> Output:
        lim = self.ctx.policy.limits
        marker = None
        if positions:

            def marker(body: dict[str, object]) -> None:
                # Same thread as the DATA before it: the POS frame follows that DATA.
                self.writer.send(POS, stream.rid, json.dumps(body).encode())

        return Output(
            sink,
            max_lines=lim.max_lines,
            max_bytes=lim.max_bytes,
            cancelled=stream.cancelled,
            marker=marker,
        )

    def _inline(
        self,
        stream: _ServedStream,
        command: str,
        parsed: Request | GateError,
        via: dict[str, Any] | None,
    ) -> None:
        buf = bytearray()
        out = self._output(buf.extend, stream)
        result = serve(command, self.ctx, out, via=via, parsed=parsed)
        if len(buf) <= stream.credit:
            # DATA and END in one write: one syscall and one SSH packet for a quick answer.
            data = b"".join(
                pack(DATA, stream.rid, bytes(buf[i : i + MAX_DATA]))
                for i in range(0, len(buf), MAX_DATA)
            )
            stream.credit -= len(buf)
            self._finish(stream, result, data)
            return

        def drain() -> None:
            try:
                stream.send_data(bytes(buf))
            except BrokenPipeError:
                result.reason = result.reason or "cancelled"
            self._finish(stream, result)

        stream.thread = threading.Thread(target=drain, daemon=True)
        stream.thread.start()

    def _threaded(
        self,
        stream: _ServedStream,
        command: str,
        parsed: Request,
        via: dict[str, Any] | None,
        positions: bool = False,
    ) -> None:
        lim = self.ctx.policy.limits
        follow = bool(getattr(parsed, "follow", False))
        stream.limit = lim.follow_max_seconds if follow else lim.max_seconds
        stream.deadline = time.monotonic() + stream.limit
        out = self._output(stream.send_data, stream, positions)
        result = serve(command, self.ctx, out, via=via, parsed=parsed)
        self._finish(stream, result)

    def _finish(self, stream: _ServedStream, result: Result, data: bytes = b"") -> None:
        with self.lock:
            self.streams.pop(stream.rid, None)
        with contextlib.suppress(BrokenPipeError):
            stream.end(result, data)


def _stderr(reason: str) -> None:
    os.write(2, f"logtorukun-gate: {reason}\n".encode())
