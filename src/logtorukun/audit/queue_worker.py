"""One daemon thread that handles a bounded queue's items in order, for the audit sinks
that must never block the writer (alerts.py, webhook.py): `put` never waits, and a full
queue refuses the item so the caller can count and log it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueWorker(Generic[T]):
    """`handle` runs in the thread for each item; an exception it lets out is not caught
    here (catch what must not end the thread in `handle`)."""

    def __init__(self, name: str, handle: Callable[[T], None], limit: int) -> None:
        self.name = name
        self.limit = limit
        self.stopping = threading.Event()  # set by `stop`: a handler's waits end early
        self._handle = handle
        self._queue: queue.Queue[T | None] = queue.Queue(limit)
        self._thread: threading.Thread | None = None

    def put(self, item: T) -> bool:
        """Queue `item` without waiting; False when the queue is full (it is dropped)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self.stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Handle what is queued, then end the thread (waiting at most `timeout`)."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and shutdown: every queued item handled."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout
            )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(item)
            finally:
                self._queue.task_done()
