"""Descriptors a test created, not every descriptor of the process.

The test process has other threads (a session's web server, asyncssh, leftover follow
threads) that open and close descriptors at any moment, so comparing all of
/proc/self/fd before and after is a race. A test compares what it holds open at or
under its own directory instead: only it can have opened those.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def held_under(base: Path) -> Counter[str]:
    """The targets of this process's descriptors at or under `base` (with multiplicity)."""
    prefix = str(base)
    held: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (another thread's, or listdir's own)
            continue
        if target == prefix or target.startswith(prefix + "/"):
            held[target] += 1
    return held


@contextmanager
def opened(path: Path) -> Iterator[int]:
    """A read-only descriptor of `path`, closed at the end (the readers take fds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)
