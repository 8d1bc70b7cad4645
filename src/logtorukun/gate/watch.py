"""Wake a follow the moment its file or directory changes: inotify through ctypes on libc.

Python's standard library has no inotify binding and the gate is standard-library
only, so the three system calls come from the running process's own libc
(`ctypes.CDLL(None)`, which needs no compiler and runs no `ldconfig`).

What is watched:
- every file the follow holds open, through `/proc/self/fd/N`, so the watch is on the
  very inode we read (not on whatever a path names now): appends, truncation
  (copytruncate), rename and unlink of that inode wake us;
- the directory of the followed path, for creates, renames and deletes of entries,
  so a new file after rotation wakes us at once. Rename events carry a cookie that
  pairs "moved from NAME" with "moved to NAME2": that is how a file that lived at the
  path only briefly (two rotations in a row) is still found.

The watch is only a wake-up signal: every read still goes through the fds the caller
opened safely, and the caller still re-checks the path on a slow timer
(`readers.BACKSTOP`) in case an event was missed (network file systems send none).
Where inotify cannot be had (no libc symbol, no /proc, `max_user_instances` or
`max_user_watches` reached) `start` returns the reason and the follow polls instead.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000

_FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVE_SELF | IN_DELETE_SELF
_DIR_MASK = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)
_READ = 1 << 16

__all__ = ["IN_CREATE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO", "Changes", "Watch", "start"]


class Changes:
    """What one drain of the event queue saw."""

    __slots__ = ("file", "names", "overflow")

    def __init__(self) -> None:
        self.file = False  # a watched file changed (append, truncate, rename, unlink)
        self.overflow = False  # the kernel dropped events: look at everything again
        self.names: list[tuple[int, int, str]] = []  # (mask, cookie, name) in the directory


class Watch:
    """One inotify instance: the followed files and their directory."""

    def __init__(self, fd: int, libc: ctypes.CDLL, directory: str) -> None:
        self.fd = fd
        self._libc = libc
        self._files: dict[int, int] = {}  # our file fd -> watch descriptor
        self._dir_wd = self._add(directory, _DIR_MASK)

    def _add(self, path: str, mask: int) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def add_file(self, fd: int) -> None:
        """Watch the inode open on `fd` (the same inode, whatever its path is now)."""
        self._files[fd] = self._add(f"/proc/self/fd/{fd}", _FILE_MASK)

    def remove_file(self, fd: int) -> None:
        wd = self._files.pop(fd, None)
        # Another fd may share the watch (same inode): the kernel gives one wd per inode.
        if wd is not None and wd not in self._files.values():
            self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if already gone

    def read(self) -> Changes:
        """Drain every queued event without blocking."""
        changes = Changes()
        while True:
            try:
                buf = os.read(self.fd, _READ)
            except BlockingIOError:
                return changes
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, cookie, length = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size
                name = buf[pos : pos + length].rstrip(b"\0")
                pos += length
                if mask & IN_Q_OVERFLOW:
                    changes.overflow = True
                elif wd == self._dir_wd:
                    changes.names.append((mask, cookie, os.fsdecode(name)))
                else:
                    changes.file = True
            if len(buf) < _READ - 4096:
                return changes

    def close(self) -> None:
        os.close(self.fd)


def start(directory: str) -> Watch | str:
    """A watch on `directory` (add files with `add_file`), or why there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init = libc.inotify_init1
    except (OSError, AttributeError):
        return "inotify is not available from libc"
    fd = int(init(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        return f"inotify_init1: {os.strerror(err)} (fs.inotify.max_user_instances?)"
    try:
        return Watch(fd, libc, directory)
    except OSError as exc:
        os.close(fd)
        return f"inotify_add_watch: {exc.strerror}"
