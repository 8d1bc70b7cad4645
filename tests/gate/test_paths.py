"""paths.open_under: the no-follow walk from the root's fd, on a real hostile tree.

Every refusal is checked on the descriptor level too: nothing is left open, and what is
returned is a blocking, close-on-exec fd of a regular file inside the root.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.paths import open_under
from logtorukun.gate.policy import FileRule
from tests.support.fds import held_under
from tests.support.swap import SWAPPER

MARKER = b"PATHS-SECRET-7f3a9c"
LOG = b"2024-12-17 14:00:00 INFO  [api] hello\n"


class Tree:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "var/log/worker"
        self.secret = base / "secret/shadow"
        self.outside = base / "outside"
        self.sibling = base / "var/log/worker-secrets"
        self.rule = FileRule(str(self.root), ("*.log",))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    t = Tree(tmp_path_factory.mktemp("paths"))
    for d in (t.root / "sub", t.secret.parent, t.outside, t.sibling, t.root / "dir.log"):
        d.mkdir(parents=True)
    (t.root / "app.log").write_bytes(LOG)
    (t.root / "sub/app.log").write_bytes(LOG)
    t.secret.write_bytes(MARKER + b"\n")
    (t.outside / "app.log").write_bytes(MARKER + b"\n")
    (t.sibling / "app.log").write_bytes(MARKER + b"\n")
    (t.root / "link.log").symlink_to(t.secret)
    (t.root / "rel.log").symlink_to("../../../secret/shadow")
    (t.root / "self.log").symlink_to("app.log")  # even a link to a good file is refused
    (t.root / "dirlink").symlink_to(t.outside)
    (t.root / "proc.log").symlink_to("/proc/self/root" + str(t.secret))
    (t.root / "fd.log").symlink_to("/proc/self/fd/0")
    (t.root / "zero.log").symlink_to("/dev/zero")
    os.mkfifo(t.root / "fifo.log")
    os.mknod(t.root / "dev.log", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # like /dev/zero
    # a second secret for the hard link: the first keeps st_nlink == 1, so that the link
    # count alone cannot be what refuses the symlink attacks on it
    linked = t.secret.with_name("linked")
    linked.write_bytes(MARKER + b"\n")
    os.link(linked, t.root / "hard.log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(t.root / "sock.log"))
    try:
        yield t
    finally:
        sock.close()


def refused(tree: Tree, rel: str, code: int, match: str, rule: FileRule | None = None) -> None:
    before = held_under(tree.base)
    with pytest.raises(GateError) as info:
        fd = open_under(rule or tree.rule, rel.split("/"), f"{tree.root}/{rel}")
        os.close(fd)
    assert info.value.code == code, (rel, info.value.reason)
    assert match in info.value.reason, info.value.reason
    assert info.value.reason.startswith(f"{tree.root}/{rel}") or "policy root" in match
    assert held_under(tree.base) == before, "a refusal leaked a descriptor"


def test_a_regular_file_opens(tree: Tree) -> None:
    for rel in ("app.log", "sub/app.log"):
        fd = open_under(tree.rule, rel.split("/"), rel)
        try:
            assert os.readlink(f"/proc/self/fd/{fd}") == str(tree.root / rel)
            assert stat.S_ISREG(os.fstat(fd).st_mode)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            assert not flags & os.O_NONBLOCK, "readers expect a blocking fd"
            assert flags & os.O_ACCMODE == os.O_RDONLY
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert os.read(fd, 100) == LOG
        finally:
            os.close(fd)


@pytest.mark.parametrize(
    ("rel", "code", "match"),
    [
        ("link.log", Exit.REFUSED, "a symbolic link or non-directory in the path"),
        ("rel.log", Exit.REFUSED, "a symbolic link"),
        ("self.log", Exit.REFUSED, "a symbolic link"),
        ("proc.log", Exit.REFUSED, "a symbolic link"),
        ("fd.log", Exit.REFUSED, "a symbolic link"),
        ("zero.log", Exit.REFUSED, "a symbolic link"),
        ("dirlink/app.log", Exit.REFUSED, "a symbolic link or non-directory"),
        ("app.log/x.log", Exit.REFUSED, "a symbolic link or non-directory"),
        ("fifo.log", Exit.REFUSED, "is not a regular file"),
        ("dev.log", Exit.REFUSED, "is not a regular file"),
        ("sock.log", Exit.FAILED, "No such device or address"),  # open(2) of a socket
        ("dir.log", Exit.REFUSED, "is not a regular file"),
        ("hard.log", Exit.REFUSED, "has 2 hard links; refused"),
        ("missing.log", Exit.NOT_FOUND, "no such file"),
        ("nodir/app.log", Exit.NOT_FOUND, "no such file"),
    ],
)
def test_hostile_entries_are_refused(tree: Tree, rel: str, code: int, match: str) -> None:
    refused(tree, rel, code, match)


def test_fifo_without_a_writer_does_not_block(tree: Tree) -> None:
    """O_NONBLOCK on the leaf: a FIFO with no writer would otherwise hang open() forever."""
    code = textwrap.dedent(f"""
        from logtorukun.gate.paths import open_under
        from logtorukun.gate.policy import FileRule
        from logtorukun.gate.errors import GateError
        try:
            open_under(FileRule({str(tree.root)!r}, ("*.log",)), ["fifo.log"], "fifo.log")
        except GateError as exc:
            print(exc.code, exc.reason)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.startswith("3 fifo.log is not a regular file")


def test_hard_link_allowed_only_when_the_policy_says_so(tree: Tree) -> None:
    lenient = FileRule(str(tree.root), ("*.log",), allow_hardlinks=True)
    fd = open_under(lenient, ["hard.log"], "hard.log")
    try:
        assert os.fstat(fd).st_nlink == 2
    finally:
        os.close(fd)


def test_missing_root(tree: Tree) -> None:
    rule = FileRule(str(tree.base / "no/such/root"), ("*.log",))
    with pytest.raises(GateError) as info:
        open_under(rule, ["app.log"], "app.log")
    assert info.value.code == Exit.NOT_FOUND
    assert "policy root" in info.value.reason


def test_root_itself_may_be_a_link_chosen_by_the_administrator(tree: Tree) -> None:
    alias = tree.base / "alias"
    alias.symlink_to(tree.root)
    fd = open_under(FileRule(str(alias), ("*.log",)), ["app.log"], "app.log")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tree.root / "app.log")
    finally:
        os.close(fd)


def test_permission_denied_is_a_refusal() -> None:
    """Run as an unprivileged user: root would read a 0600 file anyway."""
    base = Path(tempfile.mkdtemp(prefix="logtorukun-paths-"))
    try:
        base.chmod(0o755)
        (base / "private.log").write_bytes(LOG)
        (base / "private.log").chmod(0o600)
        code = textwrap.dedent(f"""
            import os, pwd
            from logtorukun.gate.paths import open_under
            from logtorukun.gate.policy import FileRule
            from logtorukun.gate.errors import GateError
            nobody = pwd.getpwnam("nobody")
            os.setgid(nobody.pw_gid); os.setuid(nobody.pw_uid)
            try:
                open_under(FileRule({str(base)!r}, ("*.log",)), ["private.log"], "p.log")
            except GateError as exc:
                print(exc.code, exc.reason)
        """)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
        )
    finally:
        shutil.rmtree(base)
    assert out.stdout.startswith("3 p.log: permission denied for the gate user"), out


# ---------------------------------------------------------------- swaps while opening


def both_seen(outcomes: dict[str, int]) -> bool:
    return "opened" in outcomes and len(outcomes) > 1


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_swapped_in_a_tight_loop_never_escapes(tree: Tree, tmp_path: Path, kind: str) -> None:
    """A second process swaps file<->symlink (or dir<->symlinked dir) as fast as it can."""
    secret_ino = os.stat(tree.secret).st_ino
    outside_ino = os.stat(tree.outside / "app.log").st_ino
    stop = tmp_path / "stop"
    good = tmp_path / "good.log"
    good.write_bytes(LOG)
    if kind == "file":
        name, evil, rel = tree.root / "swap.log", tree.secret, ["swap.log"]
    else:
        good = tree.root / ".stash"
        good.mkdir()
        (good / "app.log").write_bytes(LOG)
        name, evil, rel = tree.root / "swapdir", tree.outside, ["swapdir", "app.log"]
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, kind, str(name), str(good), str(evil), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes: dict[str, int] = {}
    try:
        for _ in range(400):  # the loop is running before the first open
            if Path(f"{stop}.{kind}").exists():
                break
            time.sleep(0.05)
        # at least 5000 opens, and on until both states were seen (a loaded machine can
        # leave the swapper off the CPU for longer than 5000 opens take); bounded
        deadline = time.monotonic() + 20
        done = 0
        while done < 5000 or (not both_seen(outcomes) and time.monotonic() < deadline):
            done += 1
            try:
                fd = open_under(tree.rule, rel, "x")
            except GateError as exc:
                key = f"refused {exc.code}"
            else:
                try:
                    st = os.fstat(fd)
                    assert st.st_ino not in (secret_ino, outside_ino)
                    assert stat.S_ISREG(st.st_mode)
                    target = os.readlink(f"/proc/self/fd/{fd}")
                    assert target.startswith(str(tree.root) + "/"), target
                    assert MARKER not in os.read(fd, 4096)
                finally:
                    os.close(fd)
                key = "opened"
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.touch()
        out, _ = swapper.communicate(timeout=20)
    assert swapper.returncode == 0
    # How many swaps depends on the CPU the swapper got; that both states were hit
    # (below) is what shows the race was real.
    assert int(out) > 0, "the swapper never swapped"
    # both states were hit: the race was real, and the file was still readable at times
    assert both_seen(outcomes), outcomes
    assert set(outcomes) <= {"opened", f"refused {Exit.REFUSED}", f"refused {Exit.NOT_FOUND}"}
