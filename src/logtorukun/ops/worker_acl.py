"""POSIX ACLs for `worker setup|remove`: read, grant, restore and strip, on the inode.

Log directories usually belong to the application, so whoever writes logs can swap a
file for a symlink between setup and remove. Every operation here therefore opens the
path with `O_PATH|O_NOFOLLOW`, checks it is a regular file or a directory, and hands
`getfacl`/`setfacl` `/proc/self/fd/N`: the tools act on the inode that was checked, never
on what a symlink points to (say /etc/shadow, which a restore would otherwise chown).

The text `read_acl` returns is `getfacl`'s own form (numeric ids, absolute name), which
is what the manifest stores and what `restore` feeds back to `setfacl --restore`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from . import system


@contextlib.contextmanager
def _fd_path(path: str) -> Iterator[tuple[str, int]]:
    """`/proc/self/fd/N` for `path` itself (not a symlink's target), and N."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UserError(f"{path} is not a regular file or directory now: left untouched")
        yield f"/proc/self/fd/{fd}", fd
    finally:
        os.close(fd)


def _tool(argv: Sequence[str], fd: int, input: str | None = None) -> str:
    out = system.run(argv, input=input, pass_fds=(fd,))
    return out.stdout


def read_acl(path: str) -> str:
    """`getfacl -pn` of the inode at `path`, with its real name in the `# file:` line."""
    with _fd_path(path) as (proc, fd):
        text = _tool([system.GETFACL, "-pn", "--", proc], fd)
    lines = text.splitlines()
    return "\n".join([f"# file: {_escape(path)}", *lines[1:]]).rstrip("\n") + "\n"


def entries(path: str) -> set[str]:
    """ACL entries as `[default:]user:NAME:r-x`, effective-rights comments dropped."""
    with _fd_path(path) as (proc, fd):
        text = _tool([system.GETFACL, "-cp", "--", proc], fd)
    return {ln.split("#")[0].strip() for ln in text.splitlines() if ln.strip()}


def modify(path: str, acl: Sequence[str]) -> None:
    """`setfacl -m` the given entries (a mask is recomputed from them, as setfacl does)."""
    with _fd_path(path) as (proc, fd):
        _tool([system.SETFACL, "-m", ",".join(acl), "--", proc], fd)


def restore(path: str, saved: str, keep: Sequence[str] = ()) -> None:
    """Put back exactly what `read_acl` saved: owner, group, mode and every entry; then
    `keep` (the grants other gate users' setups hold on the same path) on top."""
    lines = saved.rstrip("\n").splitlines()
    if not lines or not lines[0].startswith("# file: "):
        raise UserError(f"manifest entry for {path} is not getfacl output: restore it by hand")
    with _fd_path(path) as (proc, fd):
        text = "\n".join([f"# file: {proc}", *lines[1:]]) + "\n\n"
        _tool([system.SETFACL, "--restore=-"], fd, input=text)
        if keep:
            _tool([system.SETFACL, "-m", ",".join(keep), "--", proc], fd)


def strip(path: str, uid: int) -> bool:
    """Remove user `uid`'s entries (access and default) from `path`, one entry at a time
    (entries others add meanwhile stay); then the mask and the default ACL if nothing
    named is left in them. True if anything changed."""
    with _fd_path(path) as (proc, fd):
        acl = _acl_lines(_tool([system.GETFACL, "-cpn", "--", proc], fd))
        gone = [
            e.rsplit(":", 1)[0]
            for e in acl
            if e.startswith((f"user:{uid}:", f"default:user:{uid}:"))
        ]
        if not gone:
            return False
        _tool([system.SETFACL, "-x", ",".join(gone), "--", proc], fd)
        acl = _acl_lines(_tool([system.GETFACL, "-cpn", "--", proc], fd))
        access = [e for e in acl if not e.startswith("default:")]
        default = [e.removeprefix("default:") for e in acl if e.startswith("default:")]
        if not any(_named(e) for e in access) and any(e.startswith("mask:") for e in access):
            with contextlib.suppress(UserError):  # a named entry appeared meanwhile
                _tool([system.SETFACL, "-x", "mask::", "--", proc], fd)
        if default and not any(_named(e) for e in default):
            _tool([system.SETFACL, "-k", "--", proc], fd)
    return True


def _acl_lines(text: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_USER = 0x02  # ACL_USER tag in the kernel's xattr format (version 2, 8-byte entries)


def carries(path: str, uid: int) -> bool:
    """Whether `path` (not followed) has an entry for `uid`: read from the xattrs, so a
    walk over a big log tree spawns getfacl/setfacl only where there is work."""
    for name in _ACL_XATTRS:
        try:
            blob = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        for off in range(4, len(blob) - 7, 8):
            tag, _perm, ident = struct.unpack_from("<HHI", blob, off)
            if tag == _ACL_USER and ident == uid:
                return True
    return False


def _named(entry: str) -> bool:
    kind, _, rest = entry.partition(":")
    return kind in ("user", "group") and not rest.startswith(":")


def _escape(path: str) -> str:
    """getfacl's escaping of names (octal for blanks, backslash and controls)."""
    return "".join(c if c.isprintable() and c not in " \\" else f"\\{ord(c):03o}" for c in path)


def walk(root: Path) -> Iterator[str]:
    """Every directory and regular file below `root` (root included), symlinks skipped."""
    if not root.is_dir() or root.is_symlink():
        return
    yield str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                yield full
