"""The persistent gate session: many requests multiplexed over one SSH channel.

Started as the forced command with `SSH_ORIGINAL_COMMAND=bridge`. Each REQUEST frame goes
through `runner.serve`, exactly like a one-shot command (same parser, policy, limits and
audit records). The thread that reads frames only parses them: every request runs on its
own thread, so a slow read never delays another stream's CREDIT or CANCEL or a `help`.

Memory is bounded per session: a stream sends at most its credit window and then waits
(paused, until its time limit) for the client to read; the bytes held for a client that
does not read are capped across all streams (`session_buffer`); at most `MAX_RUNNING`
requests of a session run at once. A malformed frame or REQUEST ends that request with an
END refusal and a `deny` audit record; the session and its other streams go on.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
import time

from . import GATE_VERSION, grammar
from .audit import now_iso
from .cancel import CancelFlag
from .errors import Exit, GateError
from .output import PIPE_SIZE, LimitReached, Output, widen_pipe
from .protocol import (
    CANCEL,
    CREDIT,
    CREDIT_BODY,
    DATA,
    END,
    FRAME_NAMES,
    HEADER,
    HELLO,
    MAX_DATA,
    MAX_FRAME,
    MAX_REQUEST,
    POS,
    PROTOCOL_VERSION,
    REQUEST,
    WINDOW,
    FrameError,
    FrameReader,
    pack,
)
from .runner import Context, deny, is_quick, serve
from .vocabulary import Request, Status

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    from typing import Any

MAX_STREAMS = 1024
MAX_RUNNING = 64  # requests of one session running at once; the others wait their turn
_STACK = 2 << 20  # per request thread: the gate recurses little; 8 MiB x 1024 would not fit


class _Budget:
    """Bytes of answers produced but not yet written, across one session's streams."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0
        self.cond = threading.Condition()

    def take(self, n: int, stream: _ServedStream) -> None:
        """Reserve `n` bytes, waiting (paused) while the session holds its cap."""
        with self.cond:
            while self.held and self.held + n > self.cap:
                stream.wait_or_stop(self.cond, "for the client to read earlier answers")
            self.held += n

    def give(self, n: int) -> None:
        with self.cond:
            self.held -= n
            self.cond.notify_all()


class _Writer:
    """Serialises frames onto stdout; one write per frame so frames never interleave."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False
        self._spare: tuple[int, int] | None = None  # (read, write) ends: see splice_data
        self.widened = False  # stdout's pipe made larger for a long stream (widen_pipe)

    def close(self) -> None:
        """Close the splice pipe, if there is one (the session's stdout is not ours)."""
        with self.lock:
            spare, self._spare = self._spare, None
            self.broken = True
        for fd in spare or ():
            os.close(fd)

    def splice_data(self, rid: int, fd: int, offset: int, count: int) -> int:
        """One DATA frame of up to `count` bytes of file `fd` at `offset`, without
        copying them through Python: the bytes go by splice into a pipe of our own
        (which says how many there really are: the file may have shrunk), then the
        frame's header and those bytes onto stdout. Returns the bytes framed (0 at the
        end of the file), or -1 if this system cannot splice."""
        splice = getattr(os, "splice", None)
        if splice is None:
            return -1
        with self.lock:
            if self.broken:
                raise BrokenPipeError()
            try:
                if self._spare is None:
                    self._spare = os.pipe()
                spare_r, spare_w = self._spare
                n = os.sendfile(spare_w, fd, offset, count)
                if n:
                    os.write(self.fd, HEADER.pack(n, DATA, rid))
                    left = n
                    while left:
                        left -= splice(spare_r, self.fd, left)
                return n
            except OSError as exc:
                self.broken = True  # a frame may be cut off: nothing can follow it
                raise BrokenPipeError() from exc

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
        self.sent = 0  # bytes of DATA actually written: what END reports
        self.budget: _Budget | None = None
        # The session's input ended while this ran: the client is gone (or sshd is
        # tearing the session down), so no END may say the request ended, not even
        # well: one that still got through would make a cut answer look whole.
        self.orphaned = False

    def add_credit(self, n: int) -> None:
        with self.cond:
            self.credit += n
            self.cond.notify_all()

    def cancel(self) -> None:
        self.cancelled.set()
        with self.cond:
            self.cond.notify_all()
        if self.budget is not None:
            with self.budget.cond:
                self.budget.cond.notify_all()

    def wait_or_stop(self, cond: threading.Condition, what: str) -> None:
        """One wait on `cond` (held by the caller), bounded by the request's deadline;
        raises at the deadline or once the request is cancelled."""
        if self.cancelled.is_set():
            raise BrokenPipeError()
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            raise LimitReached(
                f"stopped after {self.limit:g} s waiting {what} (time limit in the policy)"
            )
        cond.wait(left if left is None else min(left, 1.0))

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            with self.cond:
                while self.credit <= 0:
                    self.wait_or_stop(self.cond, "for the client to read")
                if self.cancelled.is_set():
                    raise BrokenPipeError()
                n = min(self.credit, MAX_DATA, len(view))
                self.credit -= n
            self.writer.send(DATA, self.rid, view[:n])
            self.sent += n
            view = view[n:]

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """`Output`'s sendfile: `count` bytes of file `fd` as DATA frames within the
        credit; fewer if the file shrank; -1 if the system cannot splice."""
        if count >= PIPE_SIZE and not self.writer.widened:
            self.writer.widened = True
            widen_pipe(self.writer.fd)
        sent = 0
        while sent < count:
            with self.cond:
                while self.credit <= 0:
                    self.wait_or_stop(self.cond, "for the client to read")
                if self.cancelled.is_set():
                    raise BrokenPipeError()
                n = min(self.credit, MAX_DATA, count - sent)
                self.credit -= n
            k = self.writer.splice_data(self.rid, fd, offset + sent, n)
            if k < n:
                with self.cond:
                    self.credit += n - max(k, 0)
            if k <= 0:
                return k if sent == 0 else sent  # cannot splice (-1), or end of file
            self.sent += k
            sent += k
        return sent

    def end(self, status: Status, before: bytes = b"") -> None:
        """The END frame: `status` as served, with the bytes this stream sent."""
        sent = Status(
            status.exit, status.reason, status.lines, self.sent, status.truncated, status.pos
        )
        self.writer.send(END, self.rid, sent.to_json(), before)


class BridgeServer:
    def __init__(self, ctx: Context, infd: int = 0, outfd: int = 1) -> None:
        self.ctx = ctx
        self.infd = infd
        self.writer = _Writer(outfd)
        self.streams: dict[int, _ServedStream] = {}
        self.lock = threading.Lock()
        self.budget = _Budget(ctx.policy.limits.session_buffer)
        # Requests waiting for one of the MAX_RUNNING worker threads, oldest first.
        self.queue: collections.deque[tuple[_ServedStream, str, Any, bool]] = collections.deque()
        self.workers = 0

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
        with contextlib.suppress(ValueError):
            threading.stack_size(_STACK)
        t0 = time.monotonic()
        requests = 0
        code = 0
        try:
            self.writer.send(HELLO, 0, json.dumps(hello).encode())
            reader = FrameReader(skip_oversize=True)
            while True:
                chunk = os.read(self.infd, 1 << 18)
                if not chunk:
                    break
                frames = reader.feed(chunk)
                for ftype, rid, length in reader.oversize:
                    self._bad_frame(ftype, rid, f"frame of {length} bytes is over {MAX_FRAME}")
                reader.oversize.clear()
                for ftype, rid, payload in frames:
                    if ftype == REQUEST:
                        requests += 1
                        self._request(rid, payload)
                    elif ftype == CREDIT and len(payload) == CREDIT_BODY.size:
                        stream = self.streams.get(rid)
                        if stream is not None:
                            stream.add_credit(CREDIT_BODY.unpack(payload)[0])
                    elif ftype == CANCEL and not payload:
                        stream = self.streams.get(rid)
                        if stream is not None:
                            stream.cancel()
                    else:
                        self._bad_frame(
                            ftype, rid, f"malformed {FRAME_NAMES.get(ftype, f'type {ftype}')} frame"
                        )
        except FrameError as exc:
            _stderr(f"bridge protocol error: {exc}")
            code = int(Exit.BAD_REQUEST)
        except (BrokenPipeError, ConnectionError):
            pass
        finally:
            with self.lock:
                streams = list(self.streams.values())
                waiting = list(self.queue)
                self.queue.clear()
            for stream in streams:
                stream.orphaned = True
                stream.cancel()
            for _stream, command, via, _positions in waiting:  # never started: say so
                reason = "the session ended before this request started"
                deny(command, ctx, Exit.BUSY, reason, via=via)
            for stream in streams:
                if stream.thread is not None:
                    stream.thread.join(timeout=5)
            if not any(s.thread is not None and s.thread.is_alive() for s in streams):
                self.writer.close()  # (a request still running might still splice)
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

    def _bad_frame(self, ftype: int, rid: int, reason: str) -> None:
        """A frame the gate cannot use: audited as a denied request. If its id names a
        running stream, that stream is cancelled (its own END follows); otherwise the
        id gets an END refusal."""
        name = FRAME_NAMES.get(ftype, f"type {ftype}")
        result = deny(f"<{name} frame>", self.ctx, Exit.BAD_REQUEST, reason)
        stream = self.streams.get(rid)
        if stream is not None:
            stream.cancel()
            return
        with contextlib.suppress(BrokenPipeError):
            _ServedStream(rid, self.writer).end(result)

    def _request(self, rid: int, payload: bytes) -> None:
        stream = _ServedStream(rid, self.writer)
        stream.budget = self.budget
        with self.lock:
            if rid in self.streams:
                # An END on this id would end the client's running request: the
                # client has lost track of its ids, so the session cannot go on.
                deny("<REQUEST frame>", self.ctx, Exit.BAD_REQUEST, f"request id {rid} reused")
                raise FrameError(f"request id {rid} is already in use")
            busy = len(self.streams) >= MAX_STREAMS
            if not busy:
                self.streams[rid] = stream
        if busy:
            reason = f"too many streams (at most {MAX_STREAMS})"
            result = deny(_command_of(payload), self.ctx, Exit.BUSY, reason)
            with contextlib.suppress(BrokenPipeError):
                stream.end(result)
            return
        try:
            if len(payload) > MAX_REQUEST:
                raise ValueError(f"request of {len(payload)} bytes is over {MAX_REQUEST}")
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("a request is a JSON object")
            command = body["command"]
            via = body.get("via")
            positions = body.get("positions", False)
            if not isinstance(command, str) or not (via is None or isinstance(via, dict)):
                raise ValueError("command must be a string, via an object")
            if not isinstance(positions, bool):
                raise ValueError("positions must be true or false")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            if isinstance(exc, KeyError):
                what = f"missing {exc}"
            reason = f"malformed request: {what}"
            self._finish(stream, deny(_command_of(payload), self.ctx, Exit.BAD_REQUEST, reason))
            return
        with self.lock:
            self.queue.append((stream, command, via, positions))
            if self.workers >= MAX_RUNNING:
                return  # a worker takes it when one of the running requests ends
            self.workers += 1
        t = threading.Thread(target=self._work, daemon=True)
        stream.thread = t
        t.start()

    def _work(self) -> None:
        """A worker thread: serves queued requests until there are none left."""
        while True:
            with self.lock:
                if not self.queue:
                    self.workers -= 1
                    return
                stream, command, via, positions = self.queue.popleft()
                stream.thread = threading.current_thread()
            self._threaded(stream, command, via, positions)

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
            sendfile=stream.send_file,
        )

    def _threaded(
        self,
        stream: _ServedStream,
        command: str,
        via: dict[str, Any] | None,
        positions: bool = False,
    ) -> None:
        try:
            self._serve(stream, command, via, positions)
        except Exception as exc:  # a bug must not print a traceback or hang the client
            reason = f"internal error ({type(exc).__name__}); the request was not completed"
            with contextlib.suppress(Exception):
                self._finish(stream, deny(command, self.ctx, Exit.FAILED, reason, via=via))

    def _serve(
        self, stream: _ServedStream, command: str, via: dict[str, Any] | None, positions: bool
    ) -> None:
        lim = self.ctx.policy.limits
        # Parsed once, here: serve() gets the request (or the refusal to audit) as it is.
        parsed: Request | GateError
        request: Request | None
        try:
            request = parsed = grammar.parse(command)
        except GateError as exc:
            request, parsed = None, exc
        follow = bool(getattr(request, "follow", False))
        stream.limit = lim.follow_max_seconds if follow else lim.max_seconds
        stream.deadline = time.monotonic() + stream.limit
        # Quick answers are gathered and sent with their END in one write (while they fit
        # the credit window); the rest is streamed as it comes.
        quick = request is None or (is_quick(request) and not positions)
        sink = _Sink(stream, self.budget, gather=quick)
        out = self._output(sink.write, stream, positions)
        result = serve(command, self.ctx, out, via=via, parsed=parsed)
        self._finish(stream, result, sink.take_gathered())

    def _finish(self, stream: _ServedStream, status: Status, data: bytes = b"") -> None:
        with self.lock:
            self.streams.pop(stream.rid, None)
        if not stream.orphaned:
            with contextlib.suppress(BrokenPipeError):
                stream.end(status, data)
        if data:
            self.budget.give(len(data))


class _Sink:
    """Where a bridge request's bytes go: reserved in the session budget, then either
    gathered (a quick answer, while it fits the stream's credit) or sent as DATA."""

    def __init__(self, stream: _ServedStream, budget: _Budget, *, gather: bool) -> None:
        self.stream = stream
        self.budget = budget
        self.gathered: bytearray | None = bytearray() if gather else None

    def write(self, data: bytes) -> None:
        stream = self.stream
        self.budget.take(len(data), stream)
        got = self.gathered
        if got is not None and len(got) + len(data) <= stream.credit:
            got += data
            return
        try:
            if got is not None:
                self.gathered = None  # too big for one write: stream from here on
                size = len(got)
                try:
                    stream.send_data(got)
                finally:
                    del got  # not held while `data` waits for credit below
                    self.budget.give(size)
            stream.send_data(data)
        finally:
            self.budget.give(len(data))

    def take_gathered(self) -> bytes:
        """The gathered answer as whole DATA frames (still held in the budget: the
        caller gives it back once written), charged to the stream's credit."""
        got, self.gathered = self.gathered, None
        if not got:
            return b""
        stream = self.stream
        stream.credit -= len(got)
        stream.sent += len(got)
        frames = b"".join(
            pack(DATA, stream.rid, bytes(got[i : i + MAX_DATA]))
            for i in range(0, len(got), MAX_DATA)
        )
        self.budget.give(len(got) - len(frames))  # the budget now holds the frames
        return frames


def _command_of(payload: bytes) -> str:
    """What to record as the command of a malformed REQUEST: its text, cut (the audit
    record bounds it anyway), never anything parsed from it."""
    return payload[:MAX_REQUEST].decode("utf-8", "replace")


def _stderr(reason: str) -> None:
    os.write(2, f"logtorukun-gate: {reason}\n".encode())
