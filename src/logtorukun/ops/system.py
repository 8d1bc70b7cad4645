"""Small, careful wrappers around the machine: commands, files, users, processes.

Operator tools change a live server, so every helper here fails with one line that
says what went wrong (a `UserError`), writes files atomically, and never runs a
shell: argv lists only, like the rest of logtorukun.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
USERADD = "/usr/sbin/useradd"
USERMOD = "/usr/sbin/usermod"
USERDEL = "/usr/sbin/userdel"
SETFACL = "/usr/bin/setfacl"
GETFACL = "/usr/bin/getfacl"
VISUDO = "/usr/sbin/visudo"
GPASSWD = "/usr/bin/gpasswd"
CHPASSWD = "/usr/sbin/chpasswd"


def run(
    argv: Sequence[str],
    *,
    ok: Sequence[int] = (0,),
    input: str | None = None,
    timeout: float = 60,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[str]:
    """Run argv (no shell); a failure is a `UserError` naming the command and its stderr."""
    try:
        out = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: install it (see docs/quickstart.md)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    if out.returncode not in ok:
        why = (out.stderr or out.stdout).strip().splitlines()
        raise UserError(
            f"{' '.join(argv)} failed (exit {out.returncode}): {why[-1] if why else 'no output'}"
        )
    return out


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root: run it with sudo")


def need_program(path: str, package: str) -> None:
    if not os.access(path, os.X_OK):
        raise UserError(f"{path} not found: apt-get install {package}")


def write_atomic(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (renameat2 RENAME_EXCHANGE), so a reader of either
    name always finds a file. False where the kernel or file system cannot do it."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now; the caller still retries if it loses the race."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def keygen(path: Path, comment: str) -> None:
    """A new ed25519 key pair without passphrase (replaces an existing one)."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def shadow_password(user: str) -> str | None:
    """The password field of /etc/shadow (None if the user has no entry)."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.split(":", 1)[0]
    return None


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_system_user(name: str, home: Path, shell: str = "/bin/sh") -> bool:
    """Create a system user with no usable password; True if anything changed.

    `useradd -r` locks the account ('!'), and sshd refuses locked accounts when PAM is
    off, so the password becomes '*': no password matches it, but it is not a lock.
    """
    changed = False
    if not user_exists(name):
        run(
            [USERADD, "-r", "-M", "-d", str(home), "-s", shell, "-c", "logtorukun gate", name],
            ok=(0, 9),
        )
        changed = True
    pw = pwd.getpwnam(name)
    if pw.pw_shell != shell or pw.pw_dir != str(home):
        run([USERMOD, "-s", shell, "-d", str(home), name])
        changed = True
    if (shadow_password(name) or "").startswith("!") or shadow_password(name) == "":
        run([USERMOD, "-p", "*", name])
        changed = True
    return changed


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the parent dies, even by SIGKILL.

    The signal fires when the *thread* that forked exits, so only use it from the
    main thread (`spawn` checks).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child that cannot outlive us (see `die_with_parent`)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        main = threading.current_thread() is threading.main_thread()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent if main else None,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> set[int]:
    kids = _children()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(pid: int, *, grace: float = 3.0) -> None:
    """Stop `pid` and every descendant, leaving nothing behind.

    sshd's per-connection children call setsid(), so a process group misses them, and
    once the listener dies they are re-parented away. So: SIGTERM and wait briefly for
    a clean exit; then freeze what is left (a stopped process cannot fork) and kill it.
    """
    tree = {pid} | descendants(pid)
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        tree = {p for p in tree | descendants(pid) if alive(p)}
        if not tree:
            break
        time.sleep(0.05)
    frozen: set[int] = set()
    todo = {p for p in tree if alive(p)}
    while todo:
        for p in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen |= todo
        todo = {p for p in descendants(pid) if alive(p)} - frozen
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while frozen and time.monotonic() < deadline:
        frozen = {p for p in frozen if alive(p)}
        time.sleep(0.01)


def which(name: str) -> str | None:
    return shutil.which(name)
