"""The gate on a worker: one directory per build, named by its hash, and one symlink.

    /usr/local/lib/logtorukun/
      gate -> gate-versions/3f2a9c1d5e6b7a80   the path the forced command names
      gate-previous -> gate-versions/...      the build before the last switch
      gate-versions/<build>/                  a build: never changed once in place

Upgrading file by file let a gate starting between two files run a mix of two
versions, and a long-running bridge import a newer module into an older process. Here
a build is written complete under a temporary name and renamed into place, the switch
is one rename(2) of a new symlink over the old one, and the entry resolves the link
once at start and imports only from its own build's directory (bundle.py), which it
holds open until it exits. So a build may be deleted only when no process holds it
open; the current build and the one before the last switch are always kept. A plain
directory at the link's path (the layout before builds) is turned into the link with
one RENAME_EXCHANGE, so the forced command's path never goes missing.

Everything is root's and read-only to the gate user: the link's directory, the
versions directory and each build (the gate reports its own install, and `doctor`
checks it: gate/install.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import system
from .bundle import DEFAULT_PYTHON, GATE_ENTRY, GateBuild, file_mode, gate_build

__all__ = ["BUILD_NAME", "GateInstall", "build_gate"]

BUILD_NAME = re.compile(r"[0-9a-f]{16}", re.ASCII)
_TEMP = re.compile(r"\..*\.tmp-[0-9a-z_]+", re.ASCII)  # what a write or switch left behind
_ASIDE = re.compile(r"\.(.+)\.(?:tmp|old)-[0-9a-f]{8}", re.ASCII)  # beside the link (_relink)


@dataclass(frozen=True)
class GateInstall:
    """The gate's place on a worker, named by the link the forced command goes through."""

    link: Path

    @property
    def versions(self) -> Path:
        return self.link.with_name(self.link.name + "-versions")

    @property
    def previous(self) -> Path:
        return self.link.with_name(self.link.name + "-previous")

    def build_dir(self, build: str) -> Path:
        return self.versions / build

    def target(self, link: Path | None = None) -> str | None:
        """The build `link` (default: the gate's link) names; None when it is missing,
        not a link, or not pointing at one of our builds."""
        try:
            to = os.readlink(link or self.link)
        except OSError:
            return None
        head, _, name = to.rpartition("/")
        return name if head == self.versions.name and BUILD_NAME.fullmatch(name) else None

    def is_plain_dir(self) -> bool:
        """The layout before builds: the files straight in a directory at the link's path."""
        return self.link.is_dir() and not self.link.is_symlink()

    def matches(self, build: GateBuild) -> bool:
        """Whether the build's directory holds exactly its files, modes and owner."""
        return not differences(self.build_dir(build.id), build.files)

    def write(self, build: GateBuild) -> None:
        """Put the build's directory in place: complete before its name exists."""
        _ensure_dir(self.versions)
        tmp = Path(tempfile.mkdtemp(prefix=f".{build.id}.tmp-", dir=self.versions))
        try:
            for rel, data in sorted(build.files.items()):
                rel_dir = Path(rel).parent
                for d in (*reversed(rel_dir.parents), rel_dir):
                    _ensure_dir(tmp / d)
                path = tmp / rel
                _write_new(path, data, file_mode(rel))
            os.chmod(tmp, 0o755)  # noqa: S103 (read by the gate user, written by root only)
            final = self.build_dir(build.id)
            if not os.path.lexists(final):
                os.rename(tmp, final)
                return
            # A damaged copy under the build's name: swap it out in one step.
            if not system.exchange(tmp, final):
                shutil.rmtree(final)
                os.rename(tmp, final)
        finally:
            if os.path.lexists(tmp):
                shutil.rmtree(tmp)

    def switch(self, build: str) -> str | None:
        """Point the link at `build` with one rename(2); the build it named before
        becomes `previous`. Returns a note when the kernel could not do it in one step."""
        if not self.build_dir(build).is_dir():
            raise UserError(f"gate build {self.build_dir(build)} is missing: run setup again")
        old = self.target()
        note = self._relink(self.link, build)
        if old is not None and old != build:
            self._relink(self.previous, old)
        return note

    def _relink(self, link: Path, build: str) -> str | None:
        tmp = link.with_name(f".{link.name}.tmp-{secrets.token_hex(4)}")
        os.symlink(f"{self.versions.name}/{build}", tmp)
        try:
            if link.is_symlink() or not os.path.lexists(link):
                os.replace(tmp, link)
                return None
            if not link.is_dir():
                raise UserError(f"{link} is neither a link nor a directory: move it away")
            if system.exchange(tmp, link):  # the old directory is now at tmp
                shutil.rmtree(tmp)
                return None
            aside = link.with_name(f".{link.name}.old-{secrets.token_hex(4)}")
            os.rename(link, aside)
            os.rename(tmp, link)
            shutil.rmtree(aside)
            return (
                f"this file system cannot exchange two names in one step: {link} was"
                " missing for an instant (a request arriving then failed once)"
            )
        finally:
            if os.path.islink(tmp):
                os.unlink(tmp)

    def stale(self, keep: Iterable[str]) -> list[Path]:
        """Builds (and leftovers of an interrupted write) that may be deleted: not in
        `keep` and not held open by any process."""
        if not self.versions.is_dir():
            return []
        kept = set(keep)
        candidates = [
            p
            for p in sorted(self.versions.iterdir())
            if p.name not in kept and (BUILD_NAME.fullmatch(p.name) or _TEMP.fullmatch(p.name))
        ]
        if not candidates:
            return []
        busy = in_use(candidates)
        return [p for p in candidates if p not in busy]

    def discard(self, path: Path) -> str | None:
        """Delete a stale build, unless a gate started using it since it was planned."""
        if in_use([path]):
            return f"kept {path}: a running gate uses it"
        shutil.rmtree(path)
        return None

    def leftovers(self) -> list[Path]:
        """What a setup killed in the middle of a switch left beside the link: the new
        link not yet renamed over the old one (`.gate.tmp-*`), or a plain directory
        moved aside (`.gate.old-*`). No gate runs through them."""
        if not self.link.parent.is_dir():
            return []
        names = {self.link.name, self.previous.name}
        return sorted(
            p
            for p in self.link.parent.iterdir()
            if (m := _ASIDE.fullmatch(p.name)) is not None and m.group(1) in names
        )

    @staticmethod
    def clear(path: Path) -> None:
        """Delete a leftover (a link, or a directory moved aside)."""
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path)

    def remove(self) -> None:
        """Delete the link, `previous` and every build."""
        for link in (self.link, self.previous):
            if link.is_symlink():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link)
        if self.versions.is_dir() and not self.versions.is_symlink():
            shutil.rmtree(self.versions)


def differences(d: Path, files: dict[str, bytes]) -> list[str]:
    """Relative paths in `d` that differ from `files` (content, mode, owner, missing or
    extra; "." for the directory itself); [] when `d` is exactly the build."""
    root = os.geteuid() == 0
    want_dirs = {"."} | {
        str(parent) for rel in files for parent in Path(rel).parents if str(parent) != "."
    }
    found: set[str] = set()
    diff: list[str] = []
    try:
        st = d.lstat()
    except FileNotFoundError:
        return sorted(files)
    if not stat.S_ISDIR(st.st_mode):
        return ["."]
    for dirpath, dirnames, filenames in os.walk(d):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(d).as_posix()
            found.add(rel)
            if _wrong(path, rel, files, want_dirs, root):
                diff.append(rel)
    st = d.lstat()
    if stat.S_IMODE(st.st_mode) != 0o755 or (root and st.st_uid != 0):
        diff.append(".")
    diff += [rel for rel in [*files, *want_dirs] if rel != "." and rel not in found]
    return sorted(set(diff))


def _wrong(path: Path, rel: str, files: dict[str, bytes], dirs: set[str], root: bool) -> bool:
    st = path.lstat()
    if root and st.st_uid != 0:
        return True
    if rel in dirs:
        return not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755
    if rel not in files or not stat.S_ISREG(st.st_mode):
        return True
    return stat.S_IMODE(st.st_mode) != file_mode(rel) or path.read_bytes() != files[rel]


def in_use(dirs: Iterable[Path]) -> set[Path]:
    """Which of `dirs` some process on this machine holds open (a running gate holds its
    build's directory from start to exit) or has as its working directory."""
    wanted = {os.path.realpath(d): Path(d) for d in dirs}
    busy: set[Path] = set()
    with contextlib.suppress(FileNotFoundError):
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        for pid in pids:
            links = [f"/proc/{pid}/cwd"]
            with contextlib.suppress(OSError):
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            for link in links:
                with contextlib.suppress(OSError):
                    target = os.readlink(link)
                    for real, d in wanted.items():
                        if target == real or target.startswith(real + "/"):
                            busy.add(d)
    return busy


def _ensure_dir(d: Path) -> None:
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o755)  # noqa: S103 (whatever root's umask: read by the gate user, never written)
    if os.geteuid() == 0:
        os.chown(d, 0, 0)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())


def build_gate(link: Path, *, python: str = DEFAULT_PYTHON) -> Path:
    """Install the gate at `link` as setup does (a build, the link switched to it, stale
    builds deleted) and return the entry script's path through the link."""
    build = gate_build(python)
    inst = GateInstall(Path(link))
    inst.link.parent.mkdir(parents=True, exist_ok=True)
    if not inst.matches(build):
        inst.write(build)
    old = inst.target()
    if old != build.id:
        inst.switch(build.id)
    keep = {build.id, (old if old != build.id else inst.target(inst.previous)) or ""}
    for path in inst.stale(keep):
        inst.discard(path)
    for path in inst.leftovers():
        inst.clear(path)
    return inst.link / GATE_ENTRY
