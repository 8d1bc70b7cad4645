"""Concurrency slots shared by every gate process of one worker user.

Lock files with flock(LOCK_NB): a slot is free again the moment its holder exits, even
after kill -9, and a request that finds none is refused as busy instead of queueing.
"""

from __future__ import annotations

import fcntl
import os
import stat

from .errors import Exit, GateError
from .policy import Limits


class Slot:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def state_dir(limits: Limits) -> str:
    return limits.state_dir or default_state_dir()


def default_state_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime and runtime.startswith("/") else os.environ.get("TMPDIR", "/tmp")  # noqa: S108
    return os.path.join(base, f"logtorukun-gate-{os.getuid()}")


def private_dir(path: str) -> None:
    """Create `path` (0700) or check that it is a directory only this user can write."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise GateError(Exit.FAILED, f"cannot create state dir {path}: {exc.strerror}") from None
    st = os.lstat(path)
    # In a shared /tmp another user could have planted the directory or a link.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise GateError(
            Exit.FAILED,
            f"state dir {path} is not a private directory of this user; "
            "set limits.state_dir in the policy",
        )


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
