"""One `Change` per difference between the machine and the spec, and the probes that find
them: files and directories (ACL entries: worker_acl).

Each probe returns None when the machine already matches, which is what makes a second
`worker setup` change nothing.
"""

from __future__ import annotations

import difflib
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import system


@dataclass
class Change:
    """One difference between the machine and the spec: shown by --dry-run, then applied.

    `apply` may return a string: a note for the operator (say, a path it left alone).
    """

    what: str
    apply: Callable[[], object]
    detail: str = ""


def file_change(path: Path, text: str, mode: int, uid: int = 0, gid: int = 0) -> Change | None:
    data = text.encode()
    try:
        st = path.lstat()
        old = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        st, old = None, None
    if (
        old == data
        and st is not None
        and stat.S_IMODE(st.st_mode) == mode
        and (os.geteuid() != 0 or (st.st_uid, st.st_gid) == (uid, gid))
    ):
        return None
    if old is None:
        detail = "".join(f"    + {ln}\n" for ln in text.splitlines())
        what = f"write {path} (mode {mode:04o})"
    elif old == data:
        detail, what = "", f"fix mode/owner of {path} to {mode:04o}"
    else:
        diff = difflib.unified_diff(
            old.decode(errors="replace").splitlines(), text.splitlines(), lineterm="", n=1
        )
        detail = "".join(f"    {ln}\n" for ln in list(diff)[2:])
        what = f"update {path}"

    def apply() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        system.write_atomic(path, data, mode, uid, gid)

    return Change(what, apply, detail)


def bytes_change(path: Path, data: bytes, mode: int) -> Change | None:
    try:
        if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
            return None
    except FileNotFoundError:
        pass

    def apply() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        system.write_atomic(path, data, mode)

    return Change(f"install {path} ({len(data)} bytes, mode {mode:04o})", apply)


def dir_change(path: Path, mode: int, owner: str | None = None) -> Change | None:
    """A directory with this mode, owned by root or by `owner` (who may not exist yet)."""
    try:
        st: os.stat_result | None = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path} exists and is not a directory: move it away")
    owner_exists = owner is None or system.user_exists(owner)
    want_uid = pwd.getpwnam(owner).pw_uid if owner and owner_exists else 0
    if (
        st is not None
        and owner_exists
        and stat.S_IMODE(st.st_mode) == mode
        and (os.geteuid() != 0 or st.st_uid == want_uid)
    ):
        return None

    def apply() -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(owner) if owner else None
            os.chown(path, pw.pw_uid if pw else 0, pw.pw_gid if pw else 0)

    return Change(f"directory {path} (mode {mode:04o}, owner {owner or 'root'})", apply)
