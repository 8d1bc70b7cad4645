"""The one-shot form: one SSH channel and one gate process per request.

This is what a plain `ssh worker CMD` does, kept for gates without a bridge, for the
benchmark, and as the reference the bridge is tested against. Back-pressure comes from
SSH's own channel window: reading is paused while the caller has not taken the data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from ..gate.protocol import WINDOW
from ..gate.vocabulary import Exit
from .errors import Busy, ConnectionLost
from .stream import Status, Stream, gate_reason

_STDERR_CAP = 16384


class OneShotStream(Stream):
    def __init__(self, host: str, command: str, release: Callable[[], None]) -> None:
        super().__init__(host, command)
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._release: Callable[[], None] | None = release
        self._paused = False
        self._nl = 0
        self.stderr = b""
        self.exit_status: int | None = None
        self.exit_signal: str | None = None

    def on_consumed(self, n: int) -> None:
        if self._paused and self._buffered < WINDOW // 2 and self.chan is not None:
            self._paused = False
            self.chan.resume_reading()

    def on_cancel(self) -> None:
        if self.chan is not None:
            self.chan.close()  # sshd closes the gate's stdout: it stops at its next write

    def _data(self, data: bytes) -> None:
        self._nl += data.count(b"\n")
        self.deliver(data)
        if self._buffered > WINDOW and not self._paused and self.chan is not None:
            self._paused = True
            self.chan.pause_reading()

    def _let_go(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _ended(self, exc: Exception | None) -> None:
        self._let_go()
        if exc is not None:
            self.finish(None, ConnectionLost(self.host, f"connection lost: {exc}"))
        elif self.exit_signal is not None:
            self.finish(
                None, ConnectionLost(self.host, f"the gate was killed by SIG{self.exit_signal}")
            )
        elif self.exit_status is None:
            self.finish(None, ConnectionLost(self.host, "the channel closed without an exit"))
        else:
            self.finish(
                Status(
                    exit=self.exit_status,
                    reason=gate_reason(self.stderr),
                    lines=self._nl,
                    bytes=self.received,
                    truncated=self.exit_status == Exit.LIMIT,
                )
            )


class _OneshotChannel(asyncssh.SSHClientSession[bytes]):
    def __init__(self, stream: OneShotStream) -> None:
        self.stream = stream

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        s = self.stream
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if len(s.stderr) < _STDERR_CAP:
                s.stderr += data[: _STDERR_CAP - len(s.stderr)]
        else:
            s._data(data)

    def exit_status_received(self, status: int) -> None:
        self.stream.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.stream.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream._ended(exc)


async def start_oneshot(
    conn: asyncssh.SSHClientConnection, host: str, command: str, release: Callable[[], None]
) -> OneShotStream:
    """Open a channel running `command`; `release` is called once when it has ended."""
    stream = OneShotStream(host, command, release)
    try:
        for delay in _RETRY:
            try:
                chan, _ = await conn.create_session(
                    lambda: _OneshotChannel(stream), command, encoding=None
                )
                break
            except asyncssh.ChannelOpenError as exc:
                # sshd frees a closed session only after its main loop has handled the
                # packets that arrived with the CLOSE, so an OPEN right behind our CLOSE
                # can find MaxSessions still full. Nothing ran: try again shortly.
                if delay is None:
                    raise Busy(host, 6, f"sshd refused another session ({exc.reason})") from None
                await asyncio.sleep(delay)
    except BaseException:
        stream._let_go()
        raise
    stream.chan = chan
    return stream


_RETRY = (0.005, 0.02, 0.05, 0.1, None)
