"""Concurrency slots shared by every gate process of one worker user.

Lock files with flock(LOCK_NB): a slot is free again the moment its holder exits, even
after kill -9, and a request that finds none is refused as busy instead of queueing.
"""

from __future__ import annotations

import fcntl
import os

from .errors import Exit, GateError
from .policy import Limits
from .statedir import default_state_dir, private_dir


class Slot:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def state_dir(limits: Limits) -> str:
    return limits.state_dir or default_state_dir()


def acquire(limits: Limits) -> Slot:
    path = state_dir(limits)
    private_dir(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for i in range(limits.max_concurrent):
        fd = os.open(os.path.join(path, f"slot.{i}"), flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(fd)
    raise GateError(
        Exit.BUSY,
        f"busy: {limits.max_concurrent} requests already running on this worker "
        "(limits.max_concurrent); try again shortly",
    )
