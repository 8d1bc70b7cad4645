"""What a request that can run long takes: a concurrency slot, its children's share of the
worker's memory budget, and (one-shot) a lower CPU priority.

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

SLOW_NICE = 5  # how much lower a one-shot gate's slow work runs than the cheap reads
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


def lower_priority() -> None:
    """Run the rest of this one-shot request (and the children it starts) `SLOW_NICE`
    lower, so that cheap reads preempt slow work instead of queueing behind it for the
    CPU.

    With autogroup scheduling the kernel shares the CPU between sessions first and nice
    counts only within a session, so the gate also lowers its session's group, if that
    session is the one sshd made for this request. Best effort: the kernel allows one
    autogroup change per 100 ms per machine (the gate does not wait for its turn) and
    may have no autogroups at all.

    Not in a bridge: nice is per thread there, and a lowered thread holding the GIL (or
    a slot) would make the session's cheap requests wait for it (measured: more slow
    requests of a busy session refused as busy).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + SLOW_NICE))
    except OSError:
        return
    if not _sshd_made_our_session():
        return
    try:
        fd = os.open("/proc/self/autogroup", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        # "/autogroup-25 nice 0": a new session's is 0 whatever its processes' nice
        now = int(os.read(fd, 100).split()[-1])
        os.write(fd, b"%d" % min(19, now + SLOW_NICE))
    except (OSError, ValueError, IndexError):
        pass
    finally:
        os.close(fd)


def _sshd_made_our_session() -> bool:
    """Whether our session leader is us or our parent (`sh -c`) and its parent sshd:
    then the session holds this request alone. A gate run from a shell or a test must
    not lower the priority of everything else in its caller's session."""
    sid = os.getsid(0)
    if sid not in (os.getpid(), os.getppid()):
        return False
    try:
        with open(f"/proc/{sid}/stat", "rb") as f:
            parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        with open(f"/proc/{parent}/comm", "rb") as f:
            return f.read().startswith(b"sshd")
    except (OSError, ValueError, IndexError):
        return False
