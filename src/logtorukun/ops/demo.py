"""`logtorukun demo`: a whole local system in one command, so a newcomer sees it work.

It is the real thing on loopback, not a mock: an OpenSSH `sshd` whose only user runs
the gate as forced command (with the same `Match` block `worker setup` writes), sample
logs that keep growing and rotate now and then, and the web server with two users.
Everything lives in one state directory, so a second run reuses the keys and users
(and prints fresh passwords); Ctrl-C stops every process the demo started.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gzip
import os
import pwd
import random
import secrets
import signal
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import TextIO

from ..errors import UserError
from . import system
from .bundle import DEFAULT_PYTHON, build_gate_zipapp, gate_command
from .worker import FilesRule, key_line, match_block, policy_text

DEMO_USER = "logtorukun-demo"
DEFAULT_STATE_DIR = "/var/lib/logtorukun-demo"
DEMO_HOME = "/var/lib/logtorukun-demo-home"  # root-owned, empty: the gate user owns nothing
DEFAULT_WEB_PORT = 8080
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
READY = "demo ready"


# --------------------------------------------------------------------------- sample logs

_MESSAGES = {
    "INFO": [
        "[api] GET /api/orders/{n} 200 {ms}ms",
        "[api] POST /api/orders 201 {ms}ms order={n}",
        "[jobs] job {n} done in {s}s",
        "[cache] refreshed product catalogue ({k} items)",
    ],
    "WARN": [
        "[db] slow query {ms7}ms: SELECT * FROM orders WHERE id = {n}",
        "[payments] retrying upstream payment-gw (attempt {a}/5)",
    ],
    "ERROR": [
        "[payments] charge failed for order {n}: card declined",
        "[db] connection reset by peer (pool=main, in use {a}/20)",
    ],
    "DEBUG": ["[api] cache hit key=order:{n}"],
}


def log_line(rng: random.Random, when: datetime) -> str:
    """One line of the sample app's log: timestamp, level, component, message."""
    roll = rng.random()
    level = "ERROR" if roll < 0.07 else "WARN" if roll < 0.2 else "DEBUG" if roll < 0.3 else "INFO"
    ms = rng.randint(2, 900)
    text = rng.choice(_MESSAGES[level]).format(
        n=rng.randint(10000, 99999),
        ms=ms,
        ms7=ms * 7,
        s=f"{ms / 100:.2f}",
        k=rng.randint(900, 1100),
        a=rng.randint(2, 5),
    )
    return f"{when:%Y-%m-%d %H:%M:%S} {level:<5} {text}"


def _history(rng: random.Random, start: datetime, count: int, step: int) -> str:
    t = start
    out = []
    for _ in range(count):
        out.append(log_line(rng, t))
        t += timedelta(seconds=rng.randint(1, step))
    return "\n".join(out) + "\n"


def write_sample_logs(root: Path, now: datetime) -> None:
    """app.log (the last hour), app.log.1 (yesterday), app.log.2.gz (the day before)."""
    rng = random.Random()
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.log").write_text(_history(rng, now - timedelta(hours=1), 300, 20))
    (root / "app.log.1").write_text(_history(rng, now - timedelta(days=1), 500, 150))
    older = _history(rng, now - timedelta(days=2), 500, 150).encode()
    (root / "app.log.2.gz").write_bytes(gzip.compress(older))
    for p in root.iterdir():
        p.chmod(0o644)


class LogWriter(threading.Thread):
    """Appends a line every second or so and rotates app.log every `rotate_every` s,
    the way logrotate would (app.log.1 -> app.log.2.gz, app.log -> app.log.1)."""

    def __init__(self, root: Path, *, interval: float, rotate_every: float) -> None:
        super().__init__(name="demo-log-writer", daemon=True)
        self.root = root
        self.interval = interval
        self.rotate_every = rotate_every
        self.stop_event = threading.Event()
        self.rng = random.Random()
        self.error: BaseException | None = None

    def run(self) -> None:
        next_rotation = time.monotonic() + self.rotate_every
        try:
            while not self.stop_event.wait(self.interval * self.rng.uniform(0.3, 1.7)):
                line = log_line(self.rng, datetime.now()) + "\n"
                if time.monotonic() >= next_rotation:
                    self.rotate(line)
                    next_rotation = time.monotonic() + self.rotate_every
                else:
                    with open(self.root / "app.log", "a") as f:
                        f.write(line)
        except BaseException as exc:  # reported by the main loop, which then stops
            self.error = exc

    def rotate(self, first_line: str) -> None:
        """Rotate so that app.log never vanishes and is never empty: a reader at any
        instant finds a file with at least one line (a rename-and-create rotation with
        the new file's first line already in it)."""
        app, one = self.root / "app.log", self.root / "app.log.1"
        if one.exists():
            data = gzip.compress(one.read_bytes())
            tmp = self.root / ".app.log.2.gz.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            tmp.replace(self.root / "app.log.2.gz")
        # app.log.1 becomes the current inode (a hard link, then a rename over the old
        # .1), then a new app.log with one line replaces the name in one rename.
        linked = self.root / ".app.log.1.tmp"
        linked.unlink(missing_ok=True)
        os.link(app, linked)
        linked.replace(one)
        fresh = self.root / ".app.log.tmp"
        fresh.write_text(first_line)
        fresh.chmod(0o644)
        fresh.replace(app)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------- the demo


class Demo:
    """Owns every process and file of one demo run; `stop()` undoes the processes."""

    def __init__(
        self,
        state_dir: Path,
        web_port: int,
        ssh_port: int,
        *,
        rotate_every: float,
        interval: float,
        out: TextIO,
    ) -> None:
        self.dir = state_dir
        self.web_port = web_port
        self.ssh_port = ssh_port
        self.rotate_every = rotate_every
        self.interval = interval
        self.out = out
        self.procs: dict[str, Popen[bytes]] = {}
        self.writer: LogWriter | None = None
        self._lock: TextIO | None = None

        d = state_dir
        self.client_key = d / "client/id_ed25519"
        self.known_hosts = d / "client/known_hosts"
        self.host_key = d / "sshd/ssh_host_ed25519_key"
        self.sshd_config = d / "sshd/sshd_config"
        self.sshd_log = d / "sshd/sshd.log"
        self.zipapp = d / "worker/gate.pyz"
        self.policy = d / "worker/policy.toml"
        self.keys_dir = d / "worker/authorized_keys"
        self.logs = d / "logs"
        # Fixed, whatever the state dir: changing a user's home fails while another demo
        # (another state dir) has a session open, and the user is shared.
        self.home = Path(DEMO_HOME)
        self.gate_state = d / "gate-state"
        self.gate_audit = d / "gate-audit/gate.jsonl"
        self.server_dir = d / "server"
        self.config = d / "server/server.toml"
        self.web_log = d / "server/web.log"

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------------ set-up

    def lock(self) -> None:
        """One demo per state directory: a second one would fight over ports and files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # the gate user must reach worker/ and logs/
        f = open(self.dir / "demo.lock", "a+")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UserError(
                f"another logtorukun demo is running with {self.dir}; stop it (Ctrl-C) or"
                " pass --state-dir DIR"
            ) from None
        self._lock = f

    def prepare(self) -> None:
        system.need_root("logtorukun demo (it adds the user logtorukun-demo and starts sshd)")
        system.need_program(system.SSHD, "openssh-server")
        system.need_program(system.SSH_KEYGEN, "openssh-client")
        system.need_program(DEFAULT_PYTHON, "python3")
        for parent in self.dir.parents:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise UserError(
                    f"{parent} is mode {stat.S_IMODE(parent.stat().st_mode):04o}: the gate user"
                    f" {DEMO_USER} could not reach {self.dir}; pick a --state-dir below"
                    f" world-searchable directories (default {DEFAULT_STATE_DIR})"
                )
        self.lock()
        for sub, mode in (("client", 0o700), ("sshd", 0o700), ("worker", 0o755), ("server", 0o700)):
            (self.dir / sub).mkdir(exist_ok=True)
            (self.dir / sub).chmod(mode)
        self.keys_dir.mkdir(mode=0o755, exist_ok=True)
        self.home.mkdir(mode=0o755, parents=True, exist_ok=True)
        system.ensure_system_user(DEMO_USER, self.home)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        pw = pwd.getpwnam(DEMO_USER)
        for owned in (self.gate_state, self.gate_audit.parent):
            owned.mkdir(exist_ok=True)
            os.chown(owned, pw.pw_uid, pw.pw_gid)
            owned.chmod(0o700)
        if not self.client_key.exists():
            system.keygen(self.client_key, "logtorukun-demo-web")
        if not self.host_key.exists():
            system.keygen(self.host_key, "logtorukun-demo-host")
        write_sample_logs(self.logs, datetime.now())
        self.logs.chmod(0o755)
        build_gate_zipapp(self.zipapp, python=DEFAULT_PYTHON)
        text = policy_text(
            [_files_rule(self.logs)],
            [],
            [],
            state_dir=self.gate_state,
            audit_file=self.gate_audit,
            header="written by `logtorukun demo`",
        )
        system.write_atomic(self.policy, text.encode(), 0o644)
        pub = self.client_key.with_name("id_ed25519.pub").read_text().strip()
        line = key_line(pub, self.gate_command(), ["127.0.0.1", "::1"])
        system.write_atomic(self.keys_dir / DEMO_USER, f"{line}\n".encode(), 0o644)

    def gate_command(self) -> str:
        return gate_command(self.zipapp, self.policy, python=DEFAULT_PYTHON)

    def _write_sshd_config(self) -> None:
        # StrictModes refuses key files below a world-writable directory (/tmp); the
        # files themselves are root-owned, so relaxing it there loses nothing.
        loose = any(p.stat().st_mode & stat.S_IWOTH for p in self.dir.parents)
        text = (
            "# written by `logtorukun demo`\n"
            f"Port {self.ssh_port}\n"
            f"ListenAddress {HOST}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd/sshd.pid'}\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            f"AllowUsers {DEMO_USER}\n"
            f"StrictModes {'no' if loose else 'yes'}\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
            "\n" + match_block(DEMO_USER, self.keys_dir / DEMO_USER, self.gate_command())
        )
        system.write_atomic(self.sshd_config, text.encode(), 0o600)
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        entry = f"[{HOST}]:{self.ssh_port} {pub[0]} {pub[1]}\n"
        system.write_atomic(self.known_hosts, entry.encode(), 0o600)

    def start_sshd(self) -> None:
        choose = self.ssh_port == 0
        for attempt in range(5):
            if choose:
                self.ssh_port = system.free_port()
            elif not system.port_free(self.ssh_port):
                raise UserError(f"port {self.ssh_port} is in use: pass another --ssh-port")
            self._write_sshd_config()
            offset = self.sshd_log.stat().st_size if self.sshd_log.exists() else 0
            proc = system.spawn(
                [system.SSHD, "-D", "-e", "-f", str(self.sshd_config)], log=self.sshd_log
            )
            self.procs["sshd"] = proc
            ready = f"Server listening on {HOST} port {self.ssh_port}."
            text = self._wait_for(functools.partial(_logged, self.sshd_log, offset, ready), proc)
            if text is None:
                return
            self._stop_proc("sshd")
            log = _tail(self.sshd_log, offset).strip().splitlines()
            if choose and attempt < 4 and any("Address already in use" in ln for ln in log):
                continue
            raise UserError(
                f"sshd did not start ({text}): {log[-1] if log else 'no log'}"
                f" (full log: {self.sshd_log})"
            )

    def write_server_config(self) -> None:
        q = _q
        text = f"""\
# written by `logtorukun demo`
[server]
listen = "{HOST}:{self.web_port}"
database = {q(self.server_dir / "logtorukun.db")}
secure_cookies = false   # plain HTTP on loopback; keep the default (true) behind TLS

[[host]]
name = "demo"
address = "{HOST}"
port = {self.ssh_port}
user = "{DEMO_USER}"
key = {q(self.client_key)}
known_hosts = {q(self.known_hosts)}
labels = ["demo"]
connect_timeout = 5
request_timeout = 30

[[role]]
name = "admin"
hosts = ["*"]
sources = ["*"]
capabilities = ["tail", "search", "follow", "download", "audit"]

[[role]]
name = "viewer"
hosts = ["demo"]
sources = [{q(self.logs / "app.log")}]
capabilities = ["tail", "search"]
"""
        system.write_atomic(self.config, text.encode(), 0o600)

    def users(self) -> dict[str, str]:
        """admin and viewer with fresh passwords (printed once), and a token for viewer."""
        from ..web import AuthError, AuthStore

        auth = AuthStore(self.server_dir / "logtorukun.db")
        creds: dict[str, str] = {}
        try:
            for name, role in (("admin", "admin"), ("viewer", "viewer")):
                password = secrets.token_urlsafe(12)
                try:
                    auth.add_user(name, [role], password)
                except AuthError as exc:
                    if "exists" not in str(exc):
                        raise
                    auth.set_password(name, password)
                creds[name] = password
            token, _ = auth.create_token("viewer", 24 * 3600)
            creds["token"] = token
        finally:
            auth.close()
        return creds

    def start_web(self) -> None:
        if not system.port_free(self.web_port):
            raise UserError(f"port {self.web_port} is in use: pass another --port")
        offset = self.web_log.stat().st_size if self.web_log.exists() else 0
        argv = [
            sys.executable,
            "-m",
            "logtorukun",
            "--config",
            str(self.config),
            "serve",
            "--log-level",
            "warning",
        ]
        proc = system.spawn(argv, log=self.web_log)
        self.procs["web"] = proc
        url = f"http://{HOST}:{self.web_port}/healthz"
        why = self._wait_for(lambda: _http_ok(url), proc)
        if why is not None:
            self._stop_proc("web")
            log = _tail(self.web_log, offset).strip().splitlines()
            raise UserError(
                f"the web server did not start ({why}): "
                f"{log[-1] if log else 'no output'} (log: {self.web_log})"
            )

    def _wait_for(self, ready: Callable[[], bool], proc: Popen[bytes]) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if ready():
                return None
            if proc.poll() is not None:
                return f"exited with {proc.returncode}"
            if time.monotonic() > deadline:
                return f"not ready after {START_TIMEOUT:.0f} s"
            time.sleep(0.05)

    # ------------------------------------------------------------------ run/stop

    def banner(self, creds: dict[str, str]) -> None:
        ssh = (
            f"ssh -F /dev/null -i {self.client_key} -o UserKnownHostsFile={self.known_hosts}"
            f" -p {self.ssh_port} {DEMO_USER}@{HOST}"
        )
        web = f"http://{HOST}:{self.web_port}"
        app = self.logs / "app.log"
        say = self.say
        say("logtorukun demo: a worker (sshd + gate) and the web server, on this machine only")
        say()
        say(f"  web      {web}/")
        say(f"           admin  / {creds['admin']}   (every host and source, audit log)")
        say(f"           viewer / {creds['viewer']}   (only {app}: tail and search)")
        say("           passwords are new on every run and shown only now")
        say(f"  worker   sshd on {HOST}:{self.ssh_port}, user {DEMO_USER}, forced command:")
        say(f"           {self.gate_command()}")
        say(
            f"  logs     {self.logs}/ (app.log grows every second or so, rotates every"
            f" {self.rotate_every:g} s; app.log.2.gz is older)"
        )
        say(f"  state    {self.dir}/ (keys, known_hosts, server.toml, database; kept)")
        say()
        say("Try it:")
        say(f"  {ssh} 'tail -n 5 {app}'")
        say(f"  {ssh} 'grep -c ERROR {app}'")
        say(f"  {ssh} 'cat /etc/passwd'            # refused: not in the policy")
        say(f"  {ssh} 'tail {app}; id'      # refused: no shell behind the gate")
        say(f"  logtorukun --config {self.config} tail demo {app}")
        say(f"  curl -H 'Authorization: Bearer {creds['token']}' \\")
        say(f"       '{web}/api/hosts/demo/tail?path={app}&lines=5'")
        say()
        say(f"{READY}: press Ctrl-C to stop everything")

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set or something the demo started dies on its own."""
        while not stop.wait(0.5):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = self.sshd_log if name == "sshd" else self.web_log
                    self.say(f"logtorukun demo: {name} exited ({proc.returncode}); see {log}")
                    return 1
            if self.writer is not None and self.writer.error is not None:
                self.say(f"logtorukun demo: the log writer failed: {self.writer.error}")
                return 1
        return 0

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            system.kill_tree(proc.pid)
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        for name in ("web", "sshd"):
            self._stop_proc(name)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _files_rule(root: Path) -> FilesRule:
    return FilesRule(str(root), ("*.log", "*.log.[0-9]", "*.log.*.gz"))


def _q(value: object) -> str:
    import json

    return json.dumps(str(value))


def _logged(path: Path, offset: int, text: str) -> bool:
    return text in _tail(path, offset)


def _tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URL)
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cmd_demo(args: argparse.Namespace) -> int:
    for flag, port in (("--port", args.port), ("--ssh-port", args.ssh_port)):
        if not 0 <= port < 65536:
            raise UserError(f"{flag} {port}: a TCP port is 1-65535 (0: pick a free one)")
    if args.interval <= 0 or args.rotate_every <= 0:
        raise UserError("--interval and --rotate-every are seconds, greater than 0")
    state = Path(args.state_dir).resolve()
    web_port = args.port or system.free_port()
    demo = Demo(
        state,
        web_port,
        args.ssh_port,
        rotate_every=args.rotate_every,
        interval=args.interval,
        out=sys.stdout,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo.prepare()
        demo.start_sshd()
        demo.write_server_config()
        creds = demo.users()
        demo.start_web()
        demo.writer = LogWriter(demo.logs, interval=args.interval, rotate_every=args.rotate_every)
        demo.writer.start()
        demo.banner(creds)
        code = demo.run(stop)
    finally:
        demo.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    demo.say(f"logtorukun demo: stopped (sshd, web server and log writer); state kept in {state}")
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="start a local worker and the web server with sample logs (run as root)",
        description="A complete local system on 127.0.0.1; Ctrl-C stops everything.",
    )
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="keys, config, database and logs (default: %(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_WEB_PORT,
        metavar="N",
        help="web server port on 127.0.0.1 (default: %(default)s; 0: any free)",
    )
    p.add_argument(
        "--ssh-port",
        type=int,
        default=0,
        metavar="N",
        help="worker sshd port on 127.0.0.1 (default: any free port)",
    )
    p.add_argument(
        "--rotate-every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="rotate app.log this often (default: %(default)s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="about this long between new log lines (default: %(default)s)",
    )
    p.set_defaults(func=cmd_demo)
