"""A cancellation flag for requests served on threads (a bridge session's streams).

Kept apart from output.py so that a one-shot request, served on one thread with
`output.Flag`, never imports `threading`.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading


class CancelFlag(threading.Event):
    """A cancellation flag whose `set()` also wakes a thread blocked in `wait_fd`.

    A follow waits on an inotify descriptor; a plain `threading.Event` cannot interrupt
    a `poll()`, and slicing the wait would delay both cancellation and data."""

    def __init__(self) -> None:
        super().__init__()
        self._pokes: set[int] = set()
        self._lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._lock:
            for w in self._pokes:
                with contextlib.suppress(OSError):
                    os.write(w, b"x")

    def wait_fd(self, fd: int, seconds: float) -> bool:
        """Wait until `fd` is readable, the flag is set, or `seconds` pass; True if set."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with self._lock:
                self._pokes.add(w)
            if not self.is_set():
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.register(r, select.POLLIN)
                poller.poll(max(0, int(seconds * 1000 + 0.999)))
        finally:
            with self._lock:
                self._pokes.discard(w)
            os.close(r)
            os.close(w)
        return self.is_set()
