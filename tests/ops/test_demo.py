"""`logtorukun demo` as a newcomer runs it: a subprocess, read a log line through ssh and
through the web API, Ctrl-C, and nothing it started is left running. Then again."""

from __future__ import annotations

import gzip
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from logtorukun.ops.demo import READY, LogWriter
from logtorukun.ops.system import alive, descendants, free_port, kill_tree
from tests.support.sshd import ensure_prerequisites

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO |WARN |ERROR|DEBUG) \[")
START = 60.0  # bounded: argon2 hashing + uvicorn start on two shared cores


class Running:
    def __init__(self, state: Path, port: int) -> None:
        self.state = state
        self.port = port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "logtorukun",
                "demo",
                "--state-dir",
                str(state),
                "--port",
                str(port),
                "--rotate-every",
                "1",
                "--interval",
                "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = START) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the demo's output:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return "".join(self.output)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """Not below tmp_path: pytest's base dir is 0700 and the gate user must reach it."""
    ensure_prerequisites()
    d = Path(tempfile.mkdtemp(prefix="logtorukun-test-demo-"))
    d.chmod(0o755)
    try:
        yield d / "state"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _get(url: str, token: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run_once(state: Path) -> None:
    port = free_port()
    began = datetime.now().replace(microsecond=0)
    demo = Running(state, port)
    try:
        banner = demo.wait_for(READY)
        started = {demo.proc.pid} | descendants(demo.proc.pid)
        assert len(started) >= 3, banner  # the demo, sshd, the web server (at least)

        # ssh: the exact command the banner prints, run as a user would paste it
        line = next(ln.strip() for ln in banner.splitlines() if "'tail -n 5 " in ln)
        argv = [*line.split(" '")[0].split(), line.split(" '", 1)[1].rstrip("'")]
        argv[1:1] = ["-o", "BatchMode=yes", "-T"]
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        assert r.returncode == 0, r.stderr
        # 1 to 5: a rotation (every second here) may just have started a new app.log,
        # which the demo creates with its first line already in it
        lines = r.stdout.splitlines()
        assert 1 <= len(lines) <= 5, r.stdout
        assert all(LOG_LINE.match(ln) for ln in lines), lines
        refused = subprocess.run(
            [*argv[:-1], "cat /etc/passwd"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert refused.returncode == 3 and "root:" not in refused.stdout

        # the web API, with the viewer's token from the banner
        token = re.search(r"Bearer (\S+)'", banner)
        assert token, banner
        app = state / "logs/app.log"
        status, body = _get(
            f"http://127.0.0.1:{port}/api/hosts/demo/tail?path={app}&lines=3", token.group(1)
        )
        assert status == 200, body
        assert isinstance(body["lines"], list) and 1 <= len(body["lines"]) <= 3, body
        assert all(LOG_LINE.match(ln) for ln in body["lines"]), body
        # the viewer role is narrower: the rotated file is not theirs
        status, body = _get(
            f"http://127.0.0.1:{port}/api/hosts/demo/tail?path={app}.1", token.group(1)
        )
        assert status == 403, body
        # the search page suggests the viewer's one file, and a default that finds it
        status, body = _get(
            f"http://127.0.0.1:{port}/api/search/sources?hosts=demo", token.group(1)
        )
        assert status == 200 and body["default"] == str(app), body
        files = body["files"]
        assert isinstance(files, list) and [f["path"] for f in files] == [str(app)], body

        # a second demo on the same state dir is refused while this one runs
        second = subprocess.run(
            [sys.executable, "-m", "logtorukun", "demo", "--state-dir", str(state), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "another logtorukun demo is running" in second.stderr

        # The writer rotates (every 1 s here): app.log.1 comes to end with a line written
        # during this run instead of the sample history of yesterday.
        deadline = time.monotonic() + 30
        while True:
            last = (state / "logs/app.log.1").read_text().splitlines()[-1]
            if datetime.strptime(last[:19], "%Y-%m-%d %H:%M:%S") >= began:
                break
            assert time.monotonic() < deadline, f"no rotation within 30 s: {last}"
            time.sleep(0.1)
        with gzip.open(state / "logs/app.log.2.gz", "rt") as gz:
            assert gz.readline()[:4].isdigit()

        ssh_port = int(re.search(r"sshd on 127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        started |= descendants(demo.proc.pid)
        assert demo.stop() == 0
        demo.wait_for("stopped", timeout=5)
        left = {p for p in started if alive(p)}
        assert not left, f"still running after Ctrl-C: {left}"
        assert not _listening(port) and not _listening(ssh_port)
    finally:
        if demo.proc.poll() is None:
            kill_tree(demo.proc.pid)
            demo.proc.wait(timeout=10)


def test_demo_runs_serves_and_stops_cleanly_twice(demo_dir: Path) -> None:
    _run_once(demo_dir)
    _run_once(demo_dir)  # running it twice works: same keys and users, new passwords


def test_rotation_never_leaves_app_log_missing_empty_or_linked(tmp_path: Path) -> None:
    """The gate refuses a file with two links, so a rotation by hard link made app.log
    unreadable for an instant (the demo's search suggestions came back empty)."""
    app = tmp_path / "app.log"
    app.write_text("2024-12-17 14:00:00 INFO first\n")
    writer = LogWriter(tmp_path, interval=1, rotate_every=1)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                st = app.stat()
            except FileNotFoundError:
                seen.append("missing")
                continue
            if st.st_nlink != 1 or st.st_size == 0:
                seen.append(f"links={st.st_nlink} size={st.st_size}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        inodes = []
        for i in range(300):
            inodes.append(app.stat().st_ino)
            writer.rotate(f"2024-12-17 14:00:01 INFO line {i}\n")
            # the inode that was app.log is app.log.1 now, with its lines
            assert (tmp_path / "app.log.1").stat().st_ino == inodes[-1]
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not seen, seen[:5]
    assert app.read_text() == "2024-12-17 14:00:01 INFO line 299\n"
    assert (tmp_path / "app.log.1").read_text() == "2024-12-17 14:00:01 INFO line 298\n"
    with gzip.open(tmp_path / "app.log.2.gz", "rt") as gz:
        assert gz.read() == "2024-12-17 14:00:01 INFO line 297\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "app.log.2.gz"]
