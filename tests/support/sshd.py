"""Real OpenSSH workers for tests: one `sshd` per worker on a loopback port.

The gate's whole job is what sshd hands it (a forced command run by the user's shell,
`SSH_ORIGINAL_COMMAND`, an unprivileged user, no tty), so tests talk to a real sshd
with the real `ssh` client rather than to a mock of our beliefs about them.

A worker is the demo's `ops.local_worker.LocalWorker` (its layout: keys, sshd files,
authorized_keys, the gate, policy, audit/ and state/ owned by USER) plus:

      var/log/worker/            0755 root: the log root (app.log, app.log.1, ...)
      secret/shadow              0644 root: outside the root, but readable by USER, so a
                                 refused attack was refused by the gate, not by chmod
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from logtorukun.errors import UserError
from logtorukun.ops.local_worker import HOST, LocalWorker
from logtorukun.ops.sample_logs import write_sample_logs
from logtorukun.ops.system import run, shadow_password, write_atomic

USER = "logtorukun-t"
SYSTEM_PYTHON = "/usr/bin/python3"  # the default python3 here lives under /root (0700)
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PATTERNS = ("*.log", "*.log.[0-9]", "*.log.*.gz")


class Forced(enum.Enum):
    GATE = "gate"


GATE = Forced.GATE
"""`command=GATE` (the default): the forced command runs the gate with the worker's policy."""


# --------------------------------------------------------------------------- the machine


def ensure_prerequisites() -> None:
    """Once per process: root, the OpenSSH binaries, the gate user, /run/sshd."""
    global _READY
    if _READY:
        return
    if os.geteuid() != 0:
        raise RuntimeError("the sshd fixtures need root: they add a user and start sshd")
    missing = [p for p in (SSHD, SSH, SSH_KEYGEN, SYSTEM_PYTHON) if not os.access(p, os.X_OK)]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run ./dev test (it installs them)")
    ensure_user()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    _READY = True


_READY = False


def ensure_user() -> None:
    """Create USER once (idempotent, safe against concurrent test runs)."""
    with open("/run/logtorukun-test-user.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            run(["/usr/sbin/useradd", "-r", "-M", "-s", "/bin/sh", USER], ok=(0, 9))
            pw = pwd.getpwnam(USER)
        # useradd leaves the password '!' (locked), and sshd refuses locked accounts under
        # `UsePAM no`; '*' matches no password but is not a lock.
        if (shadow_password(USER) or "").startswith("!"):
            run(["/usr/sbin/usermod", "-p", "*", USER])
        # -M leaves no home, and sshd then prints "Could not chdir to home directory" on
        # every session's stderr. A root-owned one keeps the user read-only.
        if not os.path.isdir(pw.pw_dir):
            os.makedirs(pw.pw_dir, mode=0o755, exist_ok=True)


# --------------------------------------------------------------------------- the worker

_LIVE: set[Worker] = set()
_LIVE_LOCK = threading.Lock()


class Worker(LocalWorker):
    """One sshd on 127.0.0.1:port whose only user runs a forced command (the gate): an
    `ops.local_worker.LocalWorker` (the demo's kind) with a log root, a secret outside
    it, and the test's own sshd settings.

    `command`: GATE (default), any other forced command string, or None for a broken
    worker with no forced command at all (the key then runs whatever the client asks).
    `key_options`: the authorized_keys options before `command=`, "restrict" by default.
    `sshd_options`: extra sshd_config lines that override the fixture's defaults (a default
    whose keyword they name is left out), e.g. ["MaxSessions 10", "MaxStartups 10:30:100"]
    for sshd's stock limits or ["HostCertificate PATH"]; may be changed before start().
    """

    host = HOST

    def __init__(
        self,
        *,
        name: str = "worker",
        command: str | Forced | None = GATE,
        key_options: str = "restrict",
        policy: str | None = None,
        sshd_options: Sequence[str] = (),
    ) -> None:
        ensure_prerequisites()
        self.sshd_options = list(sshd_options)
        clean = re.sub(r"[^a-z0-9-]", "-", name.lower())[:40] or "worker"
        directory = Path(tempfile.mkdtemp(prefix=f"logtorukun-test-{clean}-"))
        super().__init__(directory, USER, name=clean, python=SYSTEM_PYTHON)
        try:
            self._layout(command, key_options, policy)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _layout(self, command: str | Forced | None, key_options: str, policy: str | None) -> None:
        d = self.dir
        self.root = d / "var/log/worker"
        self.app_log = self.root / "app.log"
        self.secret_path = d / "secret/shadow"
        self.secret_marker = f"LOGTORUKUN-SECRET-{secrets.token_hex(16)}"
        self.prepare()
        (d / "secret").mkdir(mode=0o755)
        write_sample_logs(self.root)
        for p in (d / "var", d / "var/log", self.root):
            p.chmod(0o755)
        self.secret_path.write_text(f"root:{self.secret_marker}:19000:0:99999:7:::\n")
        self.secret_path.chmod(0o644)
        self.write_policy(policy if policy is not None else self.default_policy())
        self.set_forced_command(command, key_options=key_options)

    # ----------------------------------------------------------------- configuration

    def default_policy(self, **limits: int | float) -> str:
        """The policy this worker starts with; keyword arguments override [limits]."""
        values: dict[str, int | float | str] = {
            "max_lines": 10_000,
            "max_bytes": 10_000_000,
            "max_seconds": 30,
            "follow_max_seconds": 3600,
            "max_concurrent": 8,
        }
        values.update(limits)
        values["state_dir"] = str(self.state_dir)
        body = "\n".join(f"{k} = {_toml(v)}" for k, v in values.items())
        return (
            f"# test worker {self.name}, written by tests/support/sshd.py\n"
            f"[limits]\n{body}\n\n"
            f'[audit]\ndestination = "file"\npath = {_toml(str(self.audit_path))}\n\n'
            f"[[files]]\nroot = {_toml(str(self.root))}\n"
            f"patterns = [{', '.join(_toml(p) for p in PATTERNS)}]\n"
        )

    @contextlib.contextmanager
    def policy(self, text: str) -> Iterator[None]:
        """Use `text` as the policy inside the block, then put the previous one back."""
        before = self.policy_path.read_bytes()
        self.write_policy(text)
        try:
            yield
        finally:
            write_atomic(self.policy_path, before, 0o644)

    def set_forced_command(
        self, command: str | Forced | None = GATE, *, key_options: str = "restrict"
    ) -> None:
        """Rewrite authorized_keys; sshd reads it per connection, so no restart is needed."""
        if command is GATE:
            command = self.gate_command()
        options = [o for o in key_options.split(",") if o]
        if command is not None:
            if any(c in command for c in "\r\n\0"):
                raise ValueError(f"a forced command cannot span lines: {command!r}")
            options.append('command="{}"'.format(command.replace('"', '\\"')))
        pub = self.client_public_key()
        self.write_authorized_key(f"{','.join(options)} {pub}" if options else pub)

    # ----------------------------------------------------------------- process

    def start(self, *, options: Sequence[str] = (), settings: Sequence[str] = ()) -> None:
        """Start sshd (same port and host key on a restart) and wait until it listens."""
        defaults = [
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {self.authorized_keys.parent}/%u",
            "ExposeAuthInfo yes",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
            "PermitUserRC no",
            "DisableForwarding yes",
            "PermitTTY no",
        ]
        named = {line.split()[0].lower() for line in self.sshd_options if line.strip()}
        kept = [ln for ln in defaults if ln.split()[0].lower() not in named]
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            super().start(options=[*self.sshd_options, *options], settings=[*kept, *settings])
        except UserError as exc:
            raise RuntimeError(str(exc)) from None

    def stop(self) -> None:
        """Kill sshd and everything it started (connections, sessions, gates): no leftovers."""
        with _LIVE_LOCK:
            _LIVE.discard(self)
        super().stop()

    def destroy(self) -> None:
        """Stop and remove the worker's directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- client side

    def ssh_argv(self, command: str, *, options: Sequence[str] = ()) -> list[str]:
        """The real OpenSSH client's argv; `command` is one argument, sent verbatim.

        `--` ends ssh's options: ssh parses options again after the destination, so a
        command starting with `-` (an attack test's favourite) would otherwise be one.
        """
        return [
            SSH,
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-T",  # never ask for a tty (restrict refuses it anyway): no warning on stderr
            *options,
            "-p",
            str(self.port),
            "--",
            f"{USER}@{HOST}",
            command,
        ]

    def ssh(
        self, command: str, *, timeout: float = 30, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one request the way the original article's web server does: a fresh `ssh` process."""
        return subprocess.run(
            self.ssh_argv(command),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def audit_records(self) -> list[dict[str, Any]]:
        """The gate's audit file as parsed JSON lines ([] if none was written yet)."""
        try:
            text = self.audit_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def audit_since(self, before: int) -> list[dict[str, Any]]:
        """The records after the first `before`, less the late ones of earlier clients.

        A gate writes `end` when it notices its client went away and `session_end` when a
        bridge closes, whenever that is: those of requests and sessions begun before
        `before` are another test's, not this one's.
        """
        recs = self.audit_records()
        old = recs[:before]
        requests = {r.get("id") for r in old if r.get("event") == "request"}
        sessions = {r.get("client_port") for r in old if r.get("event") == "session_start"}
        return [
            r
            for r in recs[before:]
            if not (r.get("event") == "end" and r.get("id") in requests)
            and not (r.get("event") == "session_end" and r.get("client_port") in sessions)
        ]

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Worker {self.name} {HOST}:{self.port} {state} {self.dir}>"


def _toml(value: int | float | str) -> str:
    # JSON strings of printable ASCII are valid TOML basic strings.
    return json.dumps(value)


def stop_all() -> None:
    """Stop every worker still running (atexit safety net behind the fixtures)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for w in live:
        with contextlib.suppress(Exception):
            w.stop()


atexit.register(stop_all)
