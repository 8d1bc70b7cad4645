"""The gate's own install as the gate user sees it: could this account change what the
forced command runs?

Asked by `sources` (so `logtorukun doctor` checks it from the web server, and the answer
comes from the only point of view that matters: the account's own, ACLs included). The
forced command names the entry through a root-owned link to one build's directory
(ops/gate_install.py); the account must own, and be able to write, none of: the link,
the directories above it, the build's directory and the ones above it, every file and
directory in the build. A world-writable sticky directory (/tmp) on the way is fine
when the name below it is root's: nobody else may rename or delete it.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

ENTRY_NAME = "logtorukun-gate.py"
_MAX_PROBLEMS = 10


def install_report() -> dict[str, Any] | None:
    """{"build", "link", "problems"}; None when this process is not the entry run by a
    forced command (a test, a library), which has no install to speak of."""
    entry = sys.argv[0] if sys.argv else ""
    if not entry.startswith("/") or not entry.endswith("/" + ENTRY_NAME):
        return None
    link = entry.rpartition("/")[0]
    build = __file__.rsplit("/", 3)[0]  # <build>/logtorukun/gate/install.py
    me = os.geteuid()
    problems: list[str] = []
    try:
        st = os.lstat(link)
    except OSError as exc:
        st = None
        problems.append(f"{link}: {exc.strerror}")
    if st is not None and not stat.S_ISLNK(st.st_mode):
        problems.append(
            f"{link} is a directory, not a link to a build: an upgrade is not atomic"
            " (run `logtorukun worker setup` again on the worker)"
        )
    elif st is not None and st.st_uid != 0:
        problems.append(f"{link} is owned by uid {st.st_uid}, not root")
    for path in (*_above(link), *_above(build)):
        problems += _unsafe(path, me, parent=True)
    problems += _unsafe(build, me, parent=False)
    for dirpath, dirnames, filenames in os.walk(build):
        for name in sorted(dirnames) + sorted(filenames):
            problems += _unsafe(f"{dirpath}/{name}", me, parent=False)
        if len(problems) > _MAX_PROBLEMS:
            break
    return {
        "build": build.rpartition("/")[2],
        "link": link,
        "problems": list(dict.fromkeys(problems))[:_MAX_PROBLEMS],
    }


def _above(path: str) -> list[tuple[str, str]]:
    """(directory, name in it) for every directory from `path`'s parent up to /."""
    out: list[tuple[str, str]] = []
    while path not in ("", "/"):
        head, _, name = path.rpartition("/")
        out.append((head or "/", name))
        path = head
    return out


def _unsafe(item: str | tuple[str, str], me: int, *, parent: bool) -> list[str]:
    """What lets this account change `item`: owning it, or write access (mode or ACL);
    a parent directory may be writable when sticky and its entry below is root's."""
    path, below = item if isinstance(item, tuple) else (item, "")
    try:
        st = os.lstat(path)
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    if st.st_uid == me:
        return [f"{path} is owned by the gate user"]
    if not parent and st.st_uid != 0:
        return [f"{path} is owned by uid {st.st_uid}, not root"]
    if stat.S_ISLNK(st.st_mode) or not os.access(path, os.W_OK):
        return []
    if parent and st.st_mode & stat.S_ISVTX:
        try:
            child = os.lstat(f"{path.rstrip('/')}/{below}")
        except OSError:
            return []
        if child.st_uid == 0:
            return []
    return [f"{path} is writable by the gate user"]
