"""A throwaway worker on this machine: a real OpenSSH sshd on 127.0.0.1 whose one user
runs the gate as a forced command, with its own keys, known_hosts, policy, audit file
and state directory. `logtorukun demo` runs one; the test fixtures
(tests/support/sshd.py) run many. Root only (sshd, a system user).

Layout of the directory (world-readable where the gate user must read):

    client/                0700 root: id_ed25519(.pub), known_hosts
    sshd/                  0700 root: sshd_config, host key, sshd.pid, sshd.log
    authorized_keys/USER   0644 root: the key line (`command=`...) the caller writes
    gate -> gate-versions/BUILD   root: the gate as a worker has it (gate_install.build_gate),
                           entry gate/logtorukun-gate.py
    policy.toml            0644 root
    audit/, state/         0700, owned by USER: the gate's audit file and its slots
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Sequence
from pathlib import Path
from subprocess import Popen

from ..errors import UserError
from . import system
from .bundle import DEFAULT_PYTHON, GATE_ENTRY, gate_command
from .gate_install import build_gate

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # a bound for sshd to say it listens, on a loaded machine too


class LocalWorker:
    """Files and the sshd process of one local worker; `prepare()`, then `start()`."""

    def __init__(
        self, directory: Path, user: str, *, name: str, python: str = DEFAULT_PYTHON
    ) -> None:
        d = directory
        self.dir, self.user, self.name, self.python = d, user, name, python
        self.port = 0
        self.client_key = d / "client/id_ed25519"
        self.known_hosts = d / "client/known_hosts"
        self.host_key = d / "sshd/ssh_host_ed25519_key"
        self.config_path = d / "sshd/sshd_config"
        self.pid_path = d / "sshd/sshd.pid"
        self.log_path = d / "sshd/sshd.log"
        self.authorized_keys = d / "authorized_keys" / user
        self.gate_entry = d / "gate" / GATE_ENTRY
        self.policy_path = d / "policy.toml"
        self.audit_path = d / "audit/gate.jsonl"
        self.state_dir = d / "state"
        self._proc: Popen[bytes] | None = None

    # ------------------------------------------------------------------ files

    def prepare(self) -> None:
        """Directories, the two key pairs (kept if they exist) and the gate."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # the gate user must reach gate/, policy.toml and the logs
        for sub, mode in (("client", 0o700), ("sshd", 0o700), ("authorized_keys", 0o755)):
            (self.dir / sub).mkdir(exist_ok=True)
            (self.dir / sub).chmod(mode)
        (self.dir / "gate").mkdir(mode=0o755, exist_ok=True)
        pw = pwd.getpwnam(self.user)
        for owned in (self.audit_path.parent, self.state_dir):
            owned.mkdir(exist_ok=True)
            os.chown(owned, pw.pw_uid, pw.pw_gid)
            owned.chmod(0o700)
        if not self.client_key.exists():
            system.keygen(self.client_key, f"logtorukun-{self.name}-client")
        if not self.host_key.exists():
            system.keygen(self.host_key, f"logtorukun-{self.name}-host")
        build_gate(self.gate_entry.parent, python=self.python)

    def gate_command(self) -> str:
        return gate_command(self.gate_entry, self.policy_path, python=self.python)

    def client_public_key(self) -> str:
        return self.client_key.with_name(self.client_key.name + ".pub").read_text().strip()

    def write_policy(self, text: str) -> None:
        """Replace the policy atomically: a gate starting meanwhile reads old or new, whole."""
        system.write_atomic(self.policy_path, text.encode(), 0o644)

    def write_authorized_key(self, line: str) -> None:
        """sshd reads authorized_keys on every connection: no restart needed."""
        system.write_atomic(self.authorized_keys, f"{line}\n".encode(), 0o644)

    def trust_host_key(self) -> None:
        """known_hosts for the current host key and port (`[127.0.0.1]:PORT ...`)."""
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        entry = f"[{HOST}]:{self.port} {pub[0]} {pub[1]}\n"
        system.write_atomic(self.known_hosts, entry.encode(), 0o600)

    def regenerate_host_key(self) -> None:
        """A new host key (sshd restarted if it runs), not trusted: a MITM stand-in."""
        running = self.running
        self.stop()
        system.keygen(self.host_key, f"logtorukun-{self.name}-host")
        if running:
            self.start()

    # ------------------------------------------------------------------ sshd

    def sshd_config(self, *, options: Sequence[str] = (), settings: Sequence[str] = ()) -> str:
        """The config: `options` first, then this worker's defaults less any keyword an
        option names (sshd keeps the first value of most keywords but the last of some,
        so a replaced default is left out rather than relied on to lose), then
        `settings` (a `Match` block belongs there: it runs to the end of the file)."""
        if any(c in line for line in [*options, *settings] for c in "\r\n\0"):
            raise ValueError(f"an sshd setting is one line: {[*options, *settings]!r}")
        # Below a world-writable directory (/tmp) StrictModes refuses the key files; they
        # are root-owned and not writable by the gate user, so nothing is lost.
        loose = any(p.stat().st_mode & 0o002 for p in self.dir.parents)
        defaults = [
            f"Port {self.port}",
            f"ListenAddress {HOST}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_path}",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AllowUsers {self.user}",
            f"StrictModes {'no' if loose else 'yes'}",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]
        named = {line.split()[0].lower() for line in options if line.strip()}
        kept = [ln for ln in defaults if ln.split()[0].lower() not in named]
        header = f"# local worker {self.name}, written by logtorukun.ops.local_worker\n"
        return header + "".join(f"{line}\n" for line in [*options, *kept, *settings])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, *, options: Sequence[str] = (), settings: Sequence[str] = ()) -> None:
        """Start sshd and wait until it listens. Port 0: a free port is picked (and
        trusted in known_hosts), again if another process takes it first; a restart
        keeps the port and the host key."""
        if self.running:
            return
        choose = self.port == 0
        for attempt in range(5 if choose else 1):
            if choose:
                self.port = system.free_port(HOST)
                self.trust_host_key()
            text = self.sshd_config(options=options, settings=settings)
            system.write_atomic(self.config_path, text.encode(), 0o600)
            error = self._spawn()
            if error is None:
                return
            if not (choose and "Address already in use" in error and attempt < 4):
                raise UserError(f"sshd for {self.name} did not start: {error}")
            self.port = 0

    def _spawn(self) -> str | None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [system.SSHD, "-D", "-e", "-f", str(self.config_path)]
        self._proc = proc = system.spawn(argv, log=self.log_path)
        ready = f"Server listening on {HOST} port {self.port}."
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.log_since(offset)
            if ready in text:
                return None
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                why = "exited" if proc.returncode is not None else f"no {ready!r}"
                return f"{why} (within {START_TIMEOUT:.0f} s); its log:\n{text.strip()}"
            time.sleep(0.02)

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def sshd_log(self) -> str:
        return self.log_since(0) if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop sshd and everything it started (connections, sessions, gates)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            system.kill_tree(proc.pid, grace=0)
        proc.wait(timeout=10)
