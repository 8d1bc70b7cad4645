"""Real OpenSSH workers for tests: one `sshd` per worker on a loopback port.

The gate's whole job is what sshd hands it (a forced command run by the user's shell,
`SSH_ORIGINAL_COMMAND`, an unprivileged user, no tty), so tests talk to a real sshd
with the real `ssh` client rather than to a mock of our beliefs about them.

Layout of a worker's directory (world-readable, because the gate runs as USER):

    <dir>/                       0755 root
      client/                    0700 root: id_ed25519(.pub), known_hosts
      sshd/                      0700 root: sshd_config, host key, sshd.pid, sshd.log
      authorized_keys/<USER>     0644 root: `restrict,command="<gate>" ssh-ed25519 ...`
      gate/gate.pyz              0755 root: the gate zipapp, run by /usr/bin/python3 -IS
      policy.toml                0644 root
      audit/gate.jsonl           dir owned by USER: the gate's audit records
      state/                     dir owned by USER: the gate's concurrency slots
      var/log/worker/            0755 root: the log root (app.log, app.log.1, ...)
      secret/shadow              0644 root: outside the root, but readable by USER, so a
                                 refused attack was refused by the gate, not by chmod
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import fcntl
import gzip
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from logtorukun.ops.bundle import build_gate_zipapp, gate_command
from logtorukun.ops.system import alive, descendants

USER = "logtorukun-t"
HOST = "127.0.0.1"
SYSTEM_PYTHON = "/usr/bin/python3"  # the default python3 here lives under /root (0700)
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
START_TIMEOUT = 10.0
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
            _run(["/usr/sbin/useradd", "-r", "-M", "-s", "/bin/sh", USER], ok=(0, 9))
            pw = pwd.getpwnam(USER)
        # useradd leaves the password '!' (locked), and sshd refuses locked accounts under
        # `UsePAM no`; '*' matches no password but is not a lock.
        if _shadow_password(USER).startswith("!"):
            _run(["/usr/sbin/usermod", "-p", "*", USER])
        # -M leaves no home, and sshd then prints "Could not chdir to home directory" on
        # every session's stderr. A root-owned one keeps the user read-only.
        if not os.path.isdir(pw.pw_dir):
            os.makedirs(pw.pw_dir, mode=0o755, exist_ok=True)


def _shadow_password(user: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == user:
            return rest.split(":", 1)[0]
    return ""


def _run(argv: list[str], *, ok: Sequence[int] = (0,)) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")


def free_port() -> int:
    """A loopback port free right now (sshd may still lose a race: start() retries)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


# --------------------------------------------------------------------------- sample logs

DAY = "2024-12-17"


def sample_app_log() -> str:
    """A deterministic app.log for 2024-12-17 13:00-15:59, about 800 lines.

    Fixed points tests may rely on: `2024-12-17 14:03:05 ERROR [payments] charge failed
    for order 80412` followed by a Python stack trace (lines without a timestamp); INFO,
    WARN and ERROR lines in every hour; one line of Japanese text (UTF-8).
    """
    rng = random.Random(20241217)
    t = datetime(2024, 12, 17, 13, 0, 0)
    end = datetime(2024, 12, 17, 16, 0, 0)
    lines: list[str] = []
    trace_at = datetime(2024, 12, 17, 14, 3, 5)
    japanese_at = datetime(2024, 12, 17, 14, 30, 0)
    while t < end:
        if t <= trace_at < t + timedelta(seconds=30):
            t = trace_at
            lines += [f"{t:%Y-%m-%d %H:%M:%S} ERROR [payments] charge failed for order 80412"]
            lines += _TRACE
        elif t <= japanese_at < t + timedelta(seconds=30):
            t = japanese_at
            lines.append(f"{t:%Y-%m-%d %H:%M:%S} INFO  [notify] 通知を送信しました user=42 件数=3")
        else:
            lines.append(f"{t:%Y-%m-%d %H:%M:%S} {_message(rng)}")
        t += timedelta(seconds=rng.randint(1, 25))
    return "\n".join(lines) + "\n"


_TRACE = [
    "Traceback (most recent call last):",
    '  File "/srv/worker/app/payments.py", line 88, in charge',
    "    resp = client.post(url, json=body, timeout=5)",
    '  File "/srv/worker/app/http.py", line 41, in post',
    "    raise UpstreamTimeout(url)",
    "app.http.UpstreamTimeout: https://payments.internal/v1/charge timed out after 5.0s",
]


def _message(rng: random.Random) -> str:
    roll = rng.random()
    order = rng.randint(10000, 99999)
    ms = rng.randint(2, 900)
    if roll < 0.08:
        return rng.choice(
            [
                f"ERROR [payments] charge failed for order {order}: card declined",
                f"ERROR [db] connection reset by peer (pool=main, in use {rng.randint(1, 20)}/20)",
                f"ERROR [api] POST /api/orders/{order} 500 {ms}ms",
            ]
        )
    if roll < 0.22:
        return rng.choice(
            [
                f"WARN  [db] slow query {ms * 7}ms: SELECT * FROM orders WHERE id = {order}",
                f"WARN  [payments] retrying upstream payment-gw (attempt {rng.randint(2, 5)}/5)",
                f"WARN  [api] GET /api/orders/{order} 429 rate limited client=10.0.3.{ms % 250}",
            ]
        )
    return rng.choice(
        [
            f"INFO  [api] GET /api/orders/{order} 200 {ms}ms",
            f"INFO  [api] POST /api/orders 201 {ms}ms order={order}",
            f"INFO  [jobs] job {order} done in {ms / 100:.2f}s",
            f"INFO  [cache] refreshed product catalogue ({rng.randint(900, 1100)} items)",
        ]
    )


def _older_log(day: str, seed: int, count: int) -> str:
    rng = random.Random(seed)
    t = datetime.strptime(day, "%Y-%m-%d").replace(hour=9)
    out = []
    for _ in range(count):
        out.append(f"{t:%Y-%m-%d %H:%M:%S} {_message(rng)}")
        t += timedelta(seconds=rng.randint(30, 300))
    return "\n".join(out) + "\n"


def write_sample_logs(root: Path) -> None:
    """app.log (today), app.log.1 (yesterday), app.log.2.gz (the day before), notes.txt.

    notes.txt matches no policy pattern: a file that exists under the root but is refused.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.log").write_text(sample_app_log(), encoding="utf-8")
    (root / "app.log.1").write_text(_older_log("2024-12-16", 16, 200), encoding="utf-8")
    gz = gzip.compress(_older_log("2024-12-15", 15, 200).encode(), mtime=0)
    (root / "app.log.2.gz").write_bytes(gz)
    (root / "notes.txt").write_text("not a log: no policy pattern matches this file\n")
    for p in root.iterdir():
        p.chmod(0o644)


# --------------------------------------------------------------------------- the worker

_LIVE: set[Worker] = set()
_LIVE_LOCK = threading.Lock()


class Worker:
    """One sshd on 127.0.0.1:port whose only user runs a forced command (the gate).

    `command`: GATE (default), any other forced command string, or None for a broken
    worker with no forced command at all (the key then runs whatever the client asks).
    `key_options`: the authorized_keys options before `command=`, "restrict" by default.
    `sshd_options`: extra sshd_config lines that override the fixture's defaults (a default
    whose keyword they name is left out), e.g. ["MaxSessions 10", "MaxStartups 10:30:100"]
    for sshd's stock limits or ["HostCertificate PATH"]; may be changed before start().
    """

    user = USER
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
        self.name = re.sub(r"[^a-z0-9-]", "-", name.lower())[:40] or "worker"
        self.dir = Path(tempfile.mkdtemp(prefix=f"logtorukun-test-{self.name}-"))
        try:
            self._layout(command, key_options, policy)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _layout(self, command: str | Forced | None, key_options: str, policy: str | None) -> None:
        d = self.dir
        d.chmod(0o755)  # mkdtemp makes 0700; the gate user must reach the files below
        self.port = 0
        self.root = d / "var/log/worker"
        self.app_log = self.root / "app.log"
        self.policy_path = d / "policy.toml"
        self.audit_path = d / "audit/gate.jsonl"
        self.state_dir = d / "state"
        self.secret_path = d / "secret/shadow"
        self.secret_marker = f"LOGTORUKUN-SECRET-{secrets.token_hex(16)}"
        self.client_key = d / "client/id_ed25519"
        self.known_hosts = d / "client/known_hosts"
        self.host_key = d / "sshd/ssh_host_ed25519_key"
        self.config_path = d / "sshd/sshd_config"
        self.pid_path = d / "sshd/sshd.pid"
        self.log_path = d / "sshd/sshd.log"
        self.authorized_keys = d / "authorized_keys" / USER
        self.zipapp = d / "gate/gate.pyz"
        self._proc: subprocess.Popen[bytes] | None = None

        for sub, mode in (
            ("client", 0o700),
            ("sshd", 0o700),
            ("authorized_keys", 0o755),
            ("gate", 0o755),
            ("secret", 0o755),
        ):
            (d / sub).mkdir(mode=mode)
        pw = pwd.getpwnam(USER)
        for owned in (self.audit_path.parent, self.state_dir):
            owned.mkdir(mode=0o755)
            os.chown(owned, pw.pw_uid, pw.pw_gid)
        write_sample_logs(self.root)
        for p in (d / "var", d / "var/log", self.root):
            p.chmod(0o755)
        self.secret_path.write_text(f"root:{self.secret_marker}:19000:0:99999:7:::\n")
        self.secret_path.chmod(0o644)

        keygen(self.client_key, f"logtorukun-test-client-{self.name}")
        keygen(self.host_key, f"logtorukun-test-host-{self.name}")
        build_gate_zipapp(self.zipapp, python=SYSTEM_PYTHON)
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

    def write_policy(self, text: str) -> None:
        """Replace the policy atomically: a gate starting meanwhile reads old or new, whole."""
        _write_atomic(self.policy_path, text.encode(), 0o644)

    @contextlib.contextmanager
    def policy(self, text: str) -> Iterator[None]:
        """Use `text` as the policy inside the block, then put the previous one back."""
        before = self.policy_path.read_bytes()
        self.write_policy(text)
        try:
            yield
        finally:
            _write_atomic(self.policy_path, before, 0o644)

    def gate_command(self) -> str:
        return gate_command(self.zipapp, self.policy_path, python=SYSTEM_PYTHON)

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
        pub = self.client_key.with_name(self.client_key.name + ".pub").read_text().strip()
        line = f"{','.join(options)} {pub}" if options else pub
        _write_atomic(self.authorized_keys, f"{line}\n".encode(), 0o644)

    def trust_host_key(self) -> None:
        """Write known_hosts for the current host key and port (`[127.0.0.1]:PORT ...`)."""
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        entry = f"[{HOST}]:{self.port} {pub[0]} {pub[1]}\n"
        _write_atomic(self.known_hosts, entry.encode(), 0o600)

    def regenerate_host_key(self) -> None:
        """A new host key (restarting sshd if it runs) without trusting it: a MITM stand-in."""
        running = self.running
        self.stop()
        keygen(self.host_key, f"logtorukun-test-host-{self.name}")
        if running:
            self.start()

    def _write_sshd_config(self) -> None:
        d = self.dir
        if any(c in line for line in self.sshd_options for c in "\r\n\0"):
            raise ValueError(f"an sshd option is one line: {self.sshd_options!r}")
        extra = "".join(f"{line}\n" for line in self.sshd_options)
        defaults = f"""\
Port {self.port}
ListenAddress {HOST}
HostKey {self.host_key}
PidFile {self.pid_path}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers {USER}
AuthorizedKeysFile {d}/authorized_keys/%u
# The test directory sits under /tmp, which is world-writable: StrictModes would refuse
# authorized_keys below it. The files themselves are root-owned and not writable by USER.
StrictModes no
ExposeAuthInfo yes
MaxSessions 64
MaxStartups 64:30:128
LogLevel VERBOSE
PermitUserRC no
DisableForwarding yes
PermitTTY no
PrintMotd no
"""
        # sshd keeps the first value of most keywords but the last of some (MaxStartups),
        # so a default whose keyword an option names is left out, not relied on to lose.
        named = {line.split()[0].lower() for line in self.sshd_options if line.strip()}
        kept = [
            ln
            for ln in defaults.splitlines(keepends=True)
            if ln.startswith("#") or ln.split()[0].lower() not in named
        ]
        header = f"# test worker {self.name}, written by tests/support/sshd.py\n"
        _write_atomic(self.config_path, (header + extra + "".join(kept)).encode(), 0o600)

    # ----------------------------------------------------------------- process

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> None:
        """Start sshd (same port and host key on a restart) and wait until it listens."""
        if self.running:
            return
        first = self.port == 0
        for attempt in range(5 if first else 1):
            if first:
                self.port = free_port()
                self.trust_host_key()
            self._write_sshd_config()
            error = self._spawn()
            if error is None:
                return
            if not (first and "Address already in use" in error and attempt < 4):
                raise RuntimeError(f"sshd for {self.name} did not start: {error}")

    def _spawn(self) -> str | None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent if _in_main_thread() else None,
            )
        self._proc = proc
        with _LIVE_LOCK:
            _LIVE.add(self)
        ready = f"Server listening on {HOST} port {self.port}."
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self._log_since(offset)
            if ready in text:
                return None
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                why = "exited" if proc.returncode is not None else f"no {ready!r}"
                return f"{why} after {START_TIMEOUT:.0f}s at most; its log:\n{text.strip()}"
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def sshd_log(self) -> str:
        return self._log_since(0) if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill sshd and everything it started (connections, sessions, gates): no leftovers."""
        proc, self._proc = self._proc, None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=10)

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


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- processes


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL sshd if the test process dies, even by SIGKILL.

    Only set from the main thread: the signal fires when the *thread* that forked exits.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants.

    Each sshd connection calls setsid(), so a process group does not reach them, and
    once the listener dies they are re-parented away. So freeze the whole tree first
    (a stopped process cannot fork), then kill it.
    """
    frozen: set[int] = set()
    todo = {pid}
    while todo:
        for p in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen |= todo
        todo = descendants(pid) - frozen
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    others = frozen - {pid}
    while others and time.monotonic() < deadline:
        others = {p for p in others if alive(p)}
        time.sleep(0.01)


def stop_all() -> None:
    """Stop every worker still running (atexit safety net behind the fixtures)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for w in live:
        with contextlib.suppress(Exception):
            w.stop()


atexit.register(stop_all)
