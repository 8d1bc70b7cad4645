"""Open a file under a policy root without ever following a link the client controls.

The walk starts from the root's descriptor and opens each component with O_NOFOLLOW
(directories with O_DIRECTORY), the leaf with O_NOFOLLOW|O_NONBLOCK (a FIFO must not
block us), then checks S_ISREG on the descriptor itself. Data is read from that fd, so
a symlink swapped in after the check can only ever make the open fail, never redirect it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import Exit, GateError
from .policy import FileRule

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def open_under(rule: FileRule, parts: list[str], shown: str) -> int:
    """A read-only fd of the regular file root/parts..., or GateError; `shown` names it."""
    try:
        # The root is the administrator's choice and may itself be reached through links.
        dirfd = os.open(rule.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise GateError(
            Exit.NOT_FOUND, f"policy root {rule.root} cannot be opened: {exc.strerror}"
        ) from None
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=dirfd)
            except OSError as exc:
                raise _walk_error(exc, shown) from None
            os.close(dirfd)
            dirfd = nxt
        try:
            fd = os.open(parts[-1], _LEAF_FLAGS, dir_fd=dirfd)
        except OSError as exc:
            raise _walk_error(exc, shown) from None
    finally:
        os.close(dirfd)
    try:
        check_regular(fd, rule, shown)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(fd: int, rule: FileRule, shown: str) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise GateError(Exit.REFUSED, f"{shown} is not a regular file")
    if st.st_nlink > 1 and not rule.allow_hardlinks:
        # A hard link can make a file from outside the root appear inside it.
        raise GateError(
            Exit.REFUSED,
            f"{shown} has {st.st_nlink} hard links; refused (allow_hardlinks in the policy)",
        )
    return st


def _walk_error(exc: OSError, shown: str) -> GateError:
    if exc.errno == errno.ENOENT:
        return GateError(Exit.NOT_FOUND, f"{shown}: no such file")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return GateError(Exit.REFUSED, f"{shown}: a symbolic link or non-directory in the path")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return GateError(
            Exit.REFUSED,
            f"{shown}: permission denied for the gate user (grant read access: "
            "see docs/operations.md)",
        )
    return GateError(Exit.FAILED, f"{shown}: {exc.strerror}")
