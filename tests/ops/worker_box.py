"""The throwaway worker of the `worker setup|remove` tests: an sshd root (`--root`) whose
`sshd_config` includes the drop-in directory setup writes to, a log directory, a web
server key, and the sshd started from that root. The machine's own /etc/ssh is never
read or written.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.ops import system
from logtorukun.ops.system import free_port, keygen, kill_tree
from tests.support.sshd import ensure_prerequisites

# One user per test process: two test runs at once (CI and a developer) must not share it.
USER = f"logtorukun-ws{os.getpid() % 1_000_000}"
SECRET = "secret-line-not-for-the-gate"


@dataclass
class Box:
    root: Path
    logs: Path
    key: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def setup_argv(self, *extra: str, files: str = "*.log", user: str = USER) -> list[str]:
        return [
            "worker",
            "setup",
            "--root",
            str(self.root),
            "--user",
            user,
            "--key",
            f"{self.key}.pub",
            "--from",
            "127.0.0.1",
            *(["--files", f"{self.logs}:{files}"] if files else []),
            *extra,
        ]

    def remove_argv(self, *extra: str, user: str = USER) -> list[str]:
        return ["worker", "remove", "--root", str(self.root), "--user", user, *extra]

    def wait_until_served(self, command: str) -> subprocess.CompletedProcess[str]:
        """sshd re-executes itself on SIGHUP: wait (bounded) until the new config answers."""
        deadline = time.monotonic() + 30
        while (r := self.ssh(command)).returncode != 0:
            assert time.monotonic() < deadline, r.stderr + (self.root / "sshd.log").read_text()
            time.sleep(0.1)
        return r

    def start_sshd(self) -> None:
        log = self.root / "sshd.log"
        self.proc = subprocess.Popen(
            [system.SSHD, "-D", "-e", "-f", str(self.root / "etc/ssh/sshd_config")],
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while f"port {self.port}" not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)

    def ssh(self, command: str, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(command, *options),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    def ssh_argv(self, command: str, *options: str) -> list[str]:
        """`ssh` as the gate user with the web server's key, running `command`."""
        return [
            system.SSH,
            "-F",
            "/dev/null",
            "-T",
            # before the defaults below: ssh keeps the first -o value (LogLevel=INFO)
            *options,
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.port),
            "--",
            f"{USER}@127.0.0.1",
            command,
        ]


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "sshd.log":
            out[str(p)] = (p.stat().st_mode, p.read_bytes())
        elif p.is_dir():
            out[str(p)] = (p.stat().st_mode, b"")
    return out


def acl(path: Path) -> str:
    return system.run([system.GETFACL, "-cp", str(path)]).stdout


def acl_tree(path: Path) -> list[str]:
    """`getfacl -Rpn` of everything below `path`, one block per file, sorted by name
    (readdir order changes when a file is recreated; the contents must not)."""
    out = system.run([system.GETFACL, "-Rpn", str(path)]).stdout
    return sorted(block for block in out.split("\n\n") if block.strip())


def as_user(user: str, *argv: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """Run argv as `user` (no shell, no sudo): what that account may really do."""
    pw = pwd.getpwnam(user)
    return subprocess.run(
        list(argv),
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        umask=umask,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def box() -> Iterator[Box]:
    """A throwaway sshd root and log directory, outside pytest's /tmp/pytest-of-root:
    every pytest start chmods that one to 0700, which would mask the gate's ACLs."""
    ensure_prerequisites()
    tmp_path = Path(tempfile.mkdtemp(prefix="logtorukun-ws-"))
    root = tmp_path / "root"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    for p in (tmp_path, root):
        p.chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    (logs / "app.log").write_text("2024-12-17 14:03:05 ERROR [payments] charge failed\n")
    (logs / "app.log").chmod(0o600)  # only the ACL lets the gate user read it
    (logs / "secret.txt").write_text(SECRET + "\n")
    (logs / "secret.txt").chmod(0o644)
    keygen(root / "etc/ssh/host_key", "host")
    key = tmp_path / "web_key"
    keygen(key, "web")
    port = free_port()
    (root / "etc/ssh/sshd_config").write_text(
        f"Include {root}/etc/ssh/sshd_config.d/*.conf\n"
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/etc/ssh/host_key\n"
        f"PidFile {root}/sshd.pid\nUsePAM no\n"
        # tmp_path lies under /tmp (world-writable): StrictModes would refuse the key file
        "StrictModes no\n"
        # the machine-wide policy this test does not want: passwords on for everyone
        "PasswordAuthentication yes\n"
    )
    b = Box(root, logs, key, port)
    try:
        yield b
    finally:
        if b.proc is not None:
            kill_tree(b.proc.pid)
            b.proc.wait(timeout=10)
        if system.user_exists(USER):
            main(["worker", "remove", "--root", str(root), "--user", USER])
        if system.user_exists(USER):
            system.run([system.USERDEL, USER])
        shutil.rmtree(tmp_path, ignore_errors=True)
