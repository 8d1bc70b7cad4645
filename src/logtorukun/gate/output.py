"""Where a request's bytes go: the policy's line and byte caps, cancellation, waiting.

Readers only ever call `Output.write` with whole lines and `Output.sleep` while they
wait for more; the same readers serve a one-shot `ssh` request (bytes to stdout) and a
bridge request (bytes into frames), which is what keeps both on one code path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .errors import Cancelled, Exit, GateError


class LimitReached(GateError):
    """Output stopped at a cap; what fitted was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(Exit.LIMIT, reason)


class Output:
    """Counts what is sent and stops at `max_lines` / `max_bytes`, on a line boundary."""

    def __init__(
        self,
        sink: Callable[[bytes], None],
        *,
        max_lines: int,
        max_bytes: int,
        cancelled: threading.Event | None = None,
        waiter: Callable[[float], bool] | None = None,
        marker: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self._sink = sink
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.cancelled = cancelled if cancelled is not None else threading.Event()
        self._waiter = waiter
        self.lines = 0
        self.bytes = 0
        self.truncated = False
        # (inode, offset) just past the last byte sent from a file: where a follow that
        # continues this output starts (`tail -F --from INO:OFF`). `marker` (a bridge
        # request that asked for positions) is told each new position, in order with data.
        self.position: tuple[int, int] | None = None
        self._marker = marker
        self.marked_at = time.monotonic()

    def write(self, data: bytes) -> None:
        """Send whole lines (a final line without newline is allowed only at end of input)."""
        if self.cancelled.is_set():
            raise Cancelled()
        if not data:
            return
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if self.lines + n_lines <= self.max_lines and self.bytes + len(data) <= self.max_bytes:
            self._send(data, n_lines)
            return
        # Cut at the last line that fits both caps, send that, then stop.
        room_lines = self.max_lines - self.lines
        room_bytes = self.max_bytes - self.bytes
        cut = 0
        kept = 0
        while kept < room_lines:
            nl = data.find(b"\n", cut)
            end = len(data) if nl < 0 else nl + 1
            if end > room_bytes or end == cut:
                break
            cut = end
            kept += 1
            if nl < 0:
                break
        if cut:
            self._send(data[:cut], kept)
        self.truncated = True
        which = "max_lines" if self.lines >= self.max_lines else "max_bytes"
        limit = self.max_lines if which == "max_lines" else self.max_bytes
        unit = "lines" if which == "max_lines" else "bytes"
        raise LimitReached(f"output truncated at {limit} {unit} ({which} in the policy)")

    def _send(self, data: bytes, n_lines: int) -> None:
        try:
            self._sink(data)
        except (BrokenPipeError, ConnectionError) as exc:
            self.cancelled.set()
            raise Cancelled() from exc
        self.lines += n_lines
        self.bytes += len(data)

    @property
    def wants_marks(self) -> bool:
        return self._marker is not None

    def mark(self, ino: int, off: int, gap: str = "") -> None:
        """Record the position reached; with a marker, also send it (and a gap, if any:
        data that could not be read, and why)."""
        self.position = (ino, off)
        self.marked_at = time.monotonic()
        if self._marker is None:
            return
        if self.cancelled.is_set():
            raise Cancelled()
        body: dict[str, object] = {"ino": ino, "off": off}
        if gap:
            body["gap"] = gap
        try:
            self._marker(body)
        except (BrokenPipeError, ConnectionError) as exc:
            self.cancelled.set()
            raise Cancelled() from exc

    def sleep(self, seconds: float) -> None:
        """Wait for more input; raises Cancelled as soon as the client has gone."""
        gone = self._waiter(seconds) if self._waiter is not None else self.cancelled.wait(seconds)
        if gone or self.cancelled.is_set():
            self.cancelled.set()
            raise Cancelled()


def deadline_after(seconds: float) -> float:
    """A monotonic deadline; readers compare `time.monotonic()` against it."""
    return time.monotonic() + seconds
