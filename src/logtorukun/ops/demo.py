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
import gzip
import os
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
from .bundle import DEFAULT_PYTHON
from .local_worker import LocalWorker
from .sample_logs import history, log_line
from .worker import FilesRule, key_line, match_block, policy_text

DEMO_USER = "logtorukun-demo"
DEFAULT_STATE_DIR = "/var/lib/logtorukun-demo"
DEMO_HOME = "/var/lib/logtorukun-demo-home"  # root-owned, empty: the gate user owns nothing
DEFAULT_WEB_PORT = 8080
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
READY = "demo ready"


# --------------------------------------------------------------------------- sample logs


def write_demo_logs(root: Path, now: datetime) -> None:
    """app.log (the last hour), app.log.1 (yesterday), app.log.2.gz (the day before)."""
    rng = random.Random()
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.log").write_text(history(rng, now - timedelta(hours=1), 300, 20))
    (root / "app.log.1").write_text(history(rng, now - timedelta(days=1), 500, 150))
    older = history(rng, now - timedelta(days=2), 500, 150).encode()
    (root / "app.log.2.gz").write_bytes(gzip.compress(older))
    for p in root.iterdir():
        p.chmod(0o644)


def cli_command() -> str:
    """How to run this very `logtorukun` from a shell where its venv is not activated:
    the script next to this interpreter (absolute), else `python -m logtorukun`."""
    import shlex

    script = Path(sys.executable).parent / "logtorukun"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m logtorukun"


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
        """Rotate so that app.log never vanishes, is never empty and never has a second
        link: a reader at any instant finds a file with at least one line that the gate
        will open (a rename-and-create rotation with the new file's first line in it)."""
        app, one = self.root / "app.log", self.root / "app.log.1"
        if one.exists():
            data = gzip.compress(one.read_bytes())
            tmp = self.root / ".app.log.2.gz.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            tmp.replace(self.root / "app.log.2.gz")
        # The new app.log (one line) and the current inode swap names in one step, then
        # the current inode becomes app.log.1. No hard link: the gate refuses a file with
        # two links, so a linked app.log would be unreadable for that instant.
        fresh = self.root / ".app.log.tmp"
        fresh.write_text(first_line)
        fresh.chmod(0o644)
        if system.exchange(fresh, app):
            fresh.replace(one)
        else:  # no renameat2: app.log is missing for an instant
            app.replace(one)
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
        # The worker: sshd + gate, as the test fixtures run them (ops/local_worker.py).
        self.worker = LocalWorker(d / "worker", DEMO_USER, name="demo")
        self.client_key = self.worker.client_key
        self.known_hosts = self.worker.known_hosts
        self.logs = d / "logs"
        # Fixed, whatever the state dir: changing a user's home fails while another demo
        # (another state dir) has a session open, and the user is shared.
        self.home = Path(DEMO_HOME)
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
        (self.dir / "server").mkdir(exist_ok=True)
        (self.dir / "server").chmod(0o700)
        self.home.mkdir(mode=0o755, parents=True, exist_ok=True)
        system.ensure_system_user(DEMO_USER, self.home)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        self.worker.prepare()
        write_demo_logs(self.logs, datetime.now())
        self.logs.chmod(0o755)
        text = policy_text(
            [_files_rule(self.logs)],
            [],
            [],
            state_dir=self.worker.state_dir,
            audit_file=self.worker.audit_path,
            header="written by `logtorukun demo`",
        )
        self.worker.write_policy(text)
        pub = self.worker.client_public_key()
        self.worker.write_authorized_key(key_line(pub, self.gate_command(), ["127.0.0.1", "::1"]))

    def gate_command(self) -> str:
        return self.worker.gate_command()

    def start_sshd(self) -> None:
        w = self.worker
        if self.ssh_port:
            if not system.port_free(self.ssh_port):
                raise UserError(f"port {self.ssh_port} is in use: pass another --ssh-port")
            w.port = self.ssh_port
            w.trust_host_key()
        block = match_block(DEMO_USER, w.authorized_keys, self.gate_command())
        w.start(settings=block.splitlines())
        self.ssh_port = w.port

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
        say(f"  {cli_command()} --config {self.config} tail demo {app}")
        say(f"  curl -H 'Authorization: Bearer {creds['token']}' \\")
        say(f"       '{web}/api/hosts/demo/tail?path={app}&lines=5'")
        say()
        say(f"{READY}: press Ctrl-C to stop everything")

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set or something the demo started dies on its own."""
        while not stop.wait(0.5):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = self.web_log
                    self.say(f"logtorukun demo: {name} exited ({proc.returncode}); see {log}")
                    return 1
            if not self.worker.running:
                self.say(f"logtorukun demo: sshd exited; see {self.worker.log_path}")
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
        self._stop_proc("web")
        self.worker.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _files_rule(root: Path) -> FilesRule:
    return FilesRule(str(root), ("*.log", "*.log.[0-9]", "*.log.*.gz"))


def _q(value: object) -> str:
    import json

    return json.dumps(str(value))


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
