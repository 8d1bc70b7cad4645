"""Peak resident memory of a process tree, sampled while a request runs.

The hostile tests assert that the gate's memory stayed bounded *during* a request, not
just that it ended: a background thread sums the RSS of every process below a root
(the worker's sshd), leaving sshd's own processes out, every few milliseconds.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

from logtorukun.ops.system import descendants

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(
    root: int, exclude: tuple[str, ...] = ("sshd",), by_command: dict[str, int] | None = None
) -> int:
    """Bytes resident in the descendants of `root` whose command is not in `exclude`
    (and, into `by_command`, the same per command name: python3, grep, gzip...)."""
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm.startswith(exclude):
                continue
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue  # it exited between the listing and the read
        total += rss
        if by_command is not None:
            by_command[comm] = by_command.get(comm, 0) + rss
    return total


class PeakRss:
    """`with PeakRss(sshd_pid) as peak: ...` then `peak.bytes` is the largest sum seen."""

    def __init__(self, root: int, interval: float = 0.005) -> None:
        self.root = root
        self.interval = interval
        self.bytes = 0
        self.samples = 0
        self.at_peak: dict[str, int] = {}  # bytes per command name in the peak sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            parts: dict[str, int] = {}
            total = tree_rss(self.root, by_command=parts)
            if total > self.bytes:
                self.bytes, self.at_peak = total, parts
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def mib(self) -> float:
        return self.bytes / (1 << 20)
