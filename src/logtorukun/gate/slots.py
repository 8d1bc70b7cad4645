"""What a request that can run long takes: a concurrency slot, and its children's share of
the worker's memory budget.

Slots and memory are lock files held with flock(LOCK_NB), shared by every gate process
of one worker user: a lock is free again the moment its holder exits, even after
kill -9, and a request that finds no slot is refused as busy instead of queueing.

Memory: `max_total_memory` bounds the address space (RLIMIT_AS) of all children of all
requests together. Each slot owns `UNIT` of it, so every request that gets a slot can
start its children; the rest is a pool of `UNIT` pieces (files `mem.N`) from which a
request takes what it needs to reach `max_memory`, as far as the pool has any left.
"""

from __future__ import annotations

import fcntl
import os

from .errors import Exit, GateError
from .policy import MEMORY_UNIT as UNIT
from .policy import Limits
from .statedir import default_state_dir, private_dir

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class Slot:
    def __init__(self, fd: int) -> None:
        self._fds = [fd]
        self.memory = 0  # bytes of address space this request's children may use

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing drops the flock


def state_dir(limits: Limits) -> str:
    return limits.state_dir or default_state_dir()


def _lock(path: str) -> int | None:
    fd = os.open(path, _FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def pool_units(limits: Limits) -> int:
    """Pieces of the memory budget beyond the slots' own (policy.py checks it is >= 0)."""
    return (limits.max_total_memory - limits.max_concurrent * UNIT) // UNIT


def acquire(limits: Limits, memory: int = 0) -> Slot:
    """A slot, and for a request that starts children (`memory`: what it asks for, at
    most `max_memory`) as much of the memory budget as is free up to that."""
    path = state_dir(limits)
    private_dir(path)
    for i in range(limits.max_concurrent):
        fd = _lock(os.path.join(path, f"slot.{i}"))
        if fd is not None:
            break
    else:
        raise GateError(
            Exit.BUSY,
            f"busy: {limits.max_concurrent} requests already running on this worker "
            "(limits.max_concurrent); try again shortly",
        )
    slot = Slot(fd)
    if memory > 0:
        want = -(-(min(memory, limits.max_memory) - UNIT) // UNIT)  # pieces beyond our own
        got = 0
        try:
            for j in range(pool_units(limits)):
                if got >= want:
                    break
                piece = _lock(os.path.join(path, f"mem.{j}"))
                if piece is not None:
                    slot._fds.append(piece)
                    got += 1
        except OSError:
            slot.release()
            raise
        slot.memory = min(memory, limits.max_memory, UNIT * (1 + got))
    return slot
