"""`tail -F` in the gate: wake on change (inotify), follow the path across rotation.

The follow holds the file it reads by descriptor and looks at the path only to find
the file that replaced it. On Linux it sleeps on an inotify descriptor (`watch.py`)
watching that file and its directory, so an append, a truncation, a rename or a new
file wakes it at once; it still re-checks the path every `BACKSTOP` seconds in case an
event was missed. Without inotify it polls every `interval` (`POLL_INTERVAL`). The
request's end record says which (`"follow": "inotify"` or `"poll: <why>"`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

from .output import LimitReached, Output
from .protocol import POS_EVERY
from .readers import CHUNK, FIRST_BLOCK, LINE_CAP, Shrunk, tag_at, tail_plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .watch import Changes, Watch

POLL_INTERVAL = 0.1  # without inotify: half of it is the median extra delay per line
BACKSTOP = 1.0  # with inotify: the path is still re-checked this often
SWITCH_QUIET = 0.1  # a renamed-away file must be quiet this long before we move on
SWITCH_GRACE = 5.0  # ... or we move on after this, even if it keeps growing
_DONE_KEPT = 64  # identities of files already followed to their end
_HEAD = 64  # first bytes kept of a file left behind, to tell it from a new one
_LAST = 32  # bytes before the read offset that must not change (else: truncated)
MARK_EVERY = POS_EVERY  # an idle follow re-sends its position this often: a heartbeat

__all__ = ["BACKSTOP", "POLL_INTERVAL", "SWITCH_GRACE", "SWITCH_QUIET", "follow"]

Ident = tuple[int, int]


class _Follower:
    """One file being followed: its fd, read offset and the partial last line."""

    def __init__(self, fd: int, out: Output, deadline: float, deadline_reason: str) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.ident: Ident = (st.st_dev, st.st_ino)
        self.offset = 0
        self.partial = b""
        self.out = out
        self.deadline = deadline
        self.deadline_reason = deadline_reason
        self.last = b""  # the last bytes read, to notice a truncation we did not see
        self.since = time.monotonic()  # when it was found at (or after) the path
        self.seen_pass = 0  # the loop pass that found it

    def mark(self, gap: str = "") -> None:
        """Tell the output where the complete lines sent so far end."""
        off = self.offset - len(self.partial)
        self.out.mark(self.ident[1], off, tag_at(self.fd, off), gap)

    def start(self, n: int) -> None:
        """Send the last `n` complete lines; a partial last line waits for its newline."""
        size = os.fstat(self.fd).st_size
        complete_end = size
        look = min(size, FIRST_BLOCK)
        while look:
            buf = os.pread(self.fd, look, size - look)
            if len(buf) != look:
                complete_end = 0  # truncated as we start: follow from the top
                break
            nl = buf.rfind(b"\n")
            if nl >= 0:
                complete_end = size - len(buf) + nl + 1
                break
            if look >= min(size, LINE_CAP):
                if size <= LINE_CAP:
                    complete_end = 0  # one partial line: it is all still to come
                # else: a partial line longer than LINE_CAP; its rest goes out as a piece
                break
            look = min(size, LINE_CAP)
        if n > 0 and complete_end > 0:
            for _attempt in range(3):
                try:
                    tail_plain(self.fd, complete_end, n, self.out)
                except Shrunk:
                    complete_end = 0  # truncated before we started: follow from the top
                    continue
                break
        self.offset = complete_end

    def pump(self) -> int:
        """Read and send whatever was appended; returns how many bytes were read."""
        size = os.fstat(self.fd).st_size
        if size < self.offset or (self.last and size and self._rewritten()):
            # copytruncate: the file was emptied; what it held up to `offset` was sent.
            self.flush()
            self.offset = 0
            self.last = b""
            self.mark()
        total = 0
        while self.offset < size:
            data = os.pread(self.fd, min(CHUNK, size - self.offset), self.offset)
            if not data:
                break  # shrank under us: the next pass sees it
            self.offset += len(data)
            total += len(data)
            self._feed(data)
            self.last = data[-_LAST:] if len(data) >= _LAST else (self.last + data)[-_LAST:]
            self.mark()
            if time.monotonic() >= self.deadline:
                # a writer faster than us must not keep us here forever
                raise LimitReached(self.deadline_reason)
        return total

    def _rewritten(self) -> bool:
        """The bytes just before our offset changed: truncated and written past our
        offset again before we looked (copytruncate under a busy writer)."""
        return os.pread(self.fd, len(self.last), self.offset - len(self.last)) != self.last

    def _feed(self, data: bytes) -> None:
        buf = self.partial + data if self.partial else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            self.out.write(buf if cut == len(buf) else buf[:cut])
        rest = buf[cut:]
        while len(rest) > LINE_CAP:
            self.out.write(rest[:LINE_CAP] + b"\n")
            rest = rest[LINE_CAP:]
        self.partial = rest

    def flush(self) -> None:
        """Send a held partial line (with a newline) before its file goes away."""
        if self.partial:
            data, self.partial = self.partial, b""
            self.out.write(data + b"\n")


def moved_names(events: list[tuple[int, int, str]], base: str) -> list[tuple[str, bool]]:
    """Where the files that were at `base` during these directory events are now.

    Returns `(name, left)` in the order the files came to `base`; `left` is True for a
    file that was at `base` and was renamed within the directory (found through the
    rename cookie). A file deleted, moved out of the directory or renamed over is
    not listed. Example: `app.log` renamed to `app.log.1`, a new `app.log` created
    and at once renamed to `app.log.1` too (the old one moved to `app.log.2`):
    `[("app.log.2", True), ("app.log.1", True), ("app.log", False)]`.
    """
    from .watch import IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO

    tracked: list[list[str | bool | None]] = []  # [name now (None: gone), left base?]
    moving: dict[int, list[str | bool | None]] = {}

    def gone(name: str) -> None:
        for t in tracked:
            if t[0] == name:
                t[0] = None

    for mask, cookie, name in events:
        if mask & IN_MOVED_FROM:
            t = next((t for t in tracked if t[0] == name), None)
            if t is None and name == base:
                t = [None, True]  # was at base before these events (ours, or one we missed)
                tracked.append(t)
            if t is not None:
                t[0] = None
                if name == base:
                    t[1] = True
                moving[cookie] = t
        elif mask & IN_MOVED_TO:
            gone(name)  # a rename replaces what was there
            t = moving.pop(cookie, None)
            if t is not None:
                t[0] = name
            elif name == base:
                tracked.append([name, False])
        elif mask & IN_CREATE:
            gone(name)
            if name == base:
                tracked.append([name, False])
        elif mask & IN_DELETE:
            gone(name)
    return [(str(t[0]), bool(t[1])) for t in tracked if t[0] is not None]


class _Path:
    """The followed file, the files that took its path after it, and what wakes us."""

    def __init__(
        self,
        current: _Follower,
        reopen: Callable[[], int | None],
        sibling: Callable[[str], int | None] | None,
        base: str,
    ) -> None:
        self.current = current
        self.queue: deque[_Follower] = deque()  # oldest first; the file at the path last
        # Files already followed to their end, with their first bytes: once closed, an
        # inode number can be given to a new file (a rotation deletes the oldest copy and
        # creates the next file at once), so the number alone does not name a file.
        self.done: deque[tuple[Ident, bytes]] = deque(maxlen=_DONE_KEPT)
        self.reopen = reopen
        self.sibling = sibling
        self.base = base
        self.watch: Watch | None = None
        self.passes = 0

    def known(self, ident: Ident, fd: int) -> bool:
        if ident == self.current.ident or any(f.ident == ident for f in self.queue):
            return True
        head = b""
        for done, was in self.done:
            if done == ident:
                head = head or os.pread(fd, _HEAD, 0)
                if head == was:
                    return True
        return False

    def _adopt(self, fd: int | None, at_path: bool) -> None:
        """Queue the file open on `fd` if it is new to us; otherwise close it."""
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            if self.known((st.st_dev, st.st_ino), fd):
                os.close(fd)
                return
            c = self.current
            f = _Follower(fd, c.out, c.deadline, c.deadline_reason)
        except BaseException:
            os.close(fd)
            raise
        f.seen_pass = self.passes
        if self.watch is not None:
            self.watch_file(fd)
        if at_path or not self.queue:
            self.queue.append(f)
            return
        # A file that left the path came before the one at the path now, if that one
        # is queued already (it was opened by an earlier look).
        last = self.queue[-1]
        self.queue.pop()
        self.queue.append(f)
        self.queue.append(last)

    def look(self, changes: Changes | None) -> None:
        """Find files that came to the path: by the directory's events, then the path."""
        if changes is not None and self.sibling is not None and changes.names:
            for name, left in moved_names(changes.names, self.base):
                if left and name != self.base:
                    self._adopt(self.sibling(name), at_path=False)
        self._adopt(self.reopen(), at_path=True)

    def switch(self) -> None:
        """Leave the current file for the next one in the queue."""
        old = self.current
        old.flush()
        self.done.append((old.ident, os.pread(old.fd, _HEAD, 0)))
        self.current = self.queue.popleft()
        if self.watch is not None:
            self.watch.remove_file(old.fd)
        os.close(old.fd)
        self.current.mark()

    def watch_file(self, fd: int) -> None:
        assert self.watch is not None
        try:
            self.watch.add_file(fd)
        except OSError as exc:  # max_user_watches reached: poll from now on
            self.stop_watching(f"poll: inotify_add_watch: {exc.strerror}")

    def start_watching(self, directory: str) -> str:
        from . import watch

        got = watch.start(directory)
        if isinstance(got, str):
            return f"poll: {got}"
        self.watch = got
        self.watch_file(self.current.fd)
        return "inotify" if self.watch is not None else str(self.current.out.notes["follow"])

    def stop_watching(self, note: str) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.current.out.notes["follow"] = note

    def close(self) -> None:
        for f in self.queue:
            os.close(f.fd)
        self.queue.clear()
        os.close(self.current.fd)
        if self.watch is not None:
            self.watch.close()
            self.watch = None


def follow(
    fd: int,
    reopen: Callable[[], int | None],
    n: int,
    out: Output,
    *,
    deadline: float,
    deadline_reason: str,
    interval: float = POLL_INTERVAL,
    path: str | None = None,
    sibling: Callable[[str], int | None] | None = None,
    start: tuple[int, int, int | None] | None = None,
    find: Callable[[int], int | None] | None = None,
) -> None:
    """`tail -F`: the last `n` complete lines, then each complete line as it is appended.

    Ownership: `follow` takes `fd` and every fd `reopen()`/`sibling()` return, and
    closes all of them before it returns or raises. It only ends by an exception:
    `LimitReached` (`deadline_reason` at `deadline`, or a cap), `Cancelled`, or whatever
    `reopen` raises. The first `n` lines obey the caps as in `tail` (newest lines that
    fit, then the cap).

    Waiting: with `path` (the followed path, for its directory) the follow sleeps on
    inotify; without it, or where inotify is unavailable, it polls every `interval`.

    Rotation. `reopen()` gives a fresh fd for the path (`None` while it is missing: we
    keep reading the fd we have); `sibling(name)` one for another name in the same
    directory (the policy decides; `None` if refused or missing). A file at the path
    that we have not seen is queued; we keep reading the current file until it has
    been quiet for a whole poll pass (`SWITCH_QUIET` with inotify; at most
    `SWITCH_GRACE`), because with logrotate's `create` the app keeps appending to the
    old file until postrotate makes it reopen; then we flush the old file's partial
    last line and read the next file from offset 0. With inotify, a file that was at
    the path only briefly (rotated twice before we looked) is found through the rename
    events and read in its turn; polling cannot see it (it is lost if both rotations
    fall within one `interval`).

    copytruncate: a file smaller than our offset, or whose last bytes before our offset
    changed, was truncated; we restart at offset 0. Inherent race: lines appended after
    our last read and before the truncate are in the copy only and never reach us.
    (The writer must use O_APPEND, as copytruncate itself requires.)

    Only complete lines are sent; a partial last line is held (at most `LINE_CAP`:
    longer "lines" go out in pieces, each with a newline added) and is flushed with a
    newline appended when its file is truncated or left behind.

    Continuing (`start` = (inode, offset, tag), `n` ignored): where an earlier read or
    follow ended. The same file at the path (inode, and `tag_at` the offset, match):
    from that offset. The same inode but not the same bytes there (truncated, or a new
    file that got the inode of a deleted one): from 0, with a gap. Another inode:
    `find(inode)` looks for the old file among the rotated names; found (and its tag
    matches), it is read from the offset to its end and then left as in a rotation;
    not found (compressed or deleted), the current file is read from 0, with a gap.
    Each position reached goes to `out.mark` (again every `MARK_EVERY` s while idle).
    """
    try:
        first = _Follower(fd, out, deadline, deadline_reason)
    except BaseException:
        os.close(fd)
        raise
    track = _Path(first, reopen, sibling, os.path.basename(path) if path else "")
    try:
        if path:
            out.notes["follow"] = track.start_watching(os.path.dirname(path) or "/")
        else:
            out.notes["follow"] = "poll"
        if start is None:
            first.start(n)
            first.mark()
        else:
            _continue(track, start, find)
        for f in (track.current, *track.queue):
            k = min(_LAST, f.offset)
            f.last = os.pread(f.fd, k, f.offset - k) if k else b""
        _loop(track, out, deadline, deadline_reason, interval)
    finally:
        track.close()


def _loop(track: _Path, out: Output, deadline: float, reason: str, interval: float) -> None:
    changes: Changes | None = None
    last_data = last_look = time.monotonic()
    look = True
    while True:
        track.passes += 1
        got = track.current.pump()
        now = time.monotonic()
        if got:
            last_data = now
        if look:
            track.look(changes)
            last_look = now
        if track.queue:
            nxt = track.queue[0]
            if track.watch is None:
                quiet = got == 0 and nxt.seen_pass < track.passes
            else:
                quiet = now - max(last_data, nxt.since) >= SWITCH_QUIET
            if quiet or now - nxt.since >= SWITCH_GRACE:
                track.switch()
                last_data = now
                look = False
                changes = None
                continue  # read the next file at once
        if out.wants_marks and now - out.marked_at >= MARK_EVERY:
            track.current.mark()  # nothing new: still alive, still here
        remaining = deadline - now
        if remaining <= 0:
            raise LimitReached(reason)
        watch = track.watch
        if watch is None:
            out.sleep(min(interval, remaining))
            look, changes = True, None
            continue
        wait = min(remaining, max(0.0, BACKSTOP - (now - last_look)))
        if out.wants_marks:
            wait = min(wait, max(0.0, MARK_EVERY - (now - out.marked_at)))
        if track.queue:
            wait = min(
                wait, max(0.001, SWITCH_QUIET - (now - max(last_data, track.queue[0].since)))
            )
        out.sleep(wait, watch.fd)
        changes = watch.read()
        look = (
            changes.overflow
            or time.monotonic() - last_look >= BACKSTOP
            or any(name == track.base for _, _, name in changes.names)
        )


def _same(fd: int, off: int, tag: int | None) -> bool:
    """Is `fd` the file the position (off, tag) was taken in (as far as we can tell)?"""
    return off <= os.fstat(fd).st_size and (tag is None or tag_at(fd, off) == tag)


def _continue(
    track: _Path,
    start: tuple[int, int, int | None],
    find: Callable[[int], int | None] | None,
) -> None:
    """Set up a follow that continues at `start` (see `follow`)."""
    ino, off, tag = start
    current = track.current
    if current.ident[1] == ino:
        if _same(current.fd, off, tag):
            current.offset = off
            current.mark()
        else:
            current.mark(
                f"the file was truncated or replaced since offset {off}: lines written "
                "to it after that were not kept; continuing from its start"
            )
        return
    old = find(ino) if find is not None else None
    if old is not None and not _same(old, off, tag):
        os.close(old)
        old = None
    if old is None:
        current.mark(
            f"the file being read (inode {ino}, offset {off}) was rotated away and is no "
            "longer readable (compressed or deleted): what it got after that offset is not "
            "shown; continuing from the start of the current file"
        )
        return
    # The old file is still there under a rotated name: finish it, then switch.
    try:
        prev = _Follower(old, current.out, current.deadline, current.deadline_reason)
        prev.offset = off
    except BaseException:
        os.close(old)
        raise
    track.queue.appendleft(current)
    track.current = prev
    if track.watch is not None:
        track.watch_file(prev.fd)
    prev.mark()
