"""The sshd fixtures themselves: a real sshd, a real client, and nothing left behind."""

from __future__ import annotations

import pwd
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from logtorukun.gate.policy import load_policy
from logtorukun.ops.system import alive, descendants
from tests.conftest import MakeWorker
from tests.support.sshd import PATTERNS, USER, Worker


def test_forced_command_runs_whatever_is_asked(make_worker: MakeWorker) -> None:
    w = make_worker(command="/bin/echo forced")
    for request in ["tail -n 5 /etc/passwd", "'; cat /etc/passwd; echo '", "-oProxyCommand=x"]:
        out = w.ssh(request)
        assert (out.returncode, out.stdout, out.stderr) == (0, b"forced\n", b""), request


def test_command_reaches_sshd_verbatim(make_worker: MakeWorker) -> None:
    w = make_worker(command="/usr/bin/printenv SSH_ORIGINAL_COMMAND")
    for request in ["tail -n 5 /var/log/x", "-n;echo${IFS}x $(id) `id`", "a\nb", "  two  spaces "]:
        out = w.ssh(request)
        assert out.returncode == 0, out.stderr
        assert out.stdout == request.encode() + b"\n"


def test_input_reaches_the_command(make_worker: MakeWorker) -> None:
    w = make_worker(command="/usr/bin/wc -c")
    assert w.ssh("x", input=b"12345").stdout.strip() == b"5"
    assert w.ssh("x").stdout.strip() == b"0"  # no input: stdin is /dev/null, not ours


def test_no_forced_command_shows_what_the_user_can_do(make_worker: MakeWorker) -> None:
    """A broken worker (no command=) runs anything: this is what the gate has to prevent."""
    w = make_worker(command=None)
    out = w.ssh("id -un; pwd")
    assert (out.returncode, out.stderr) == (0, b""), out.stderr  # no chdir warning
    assert out.stdout.decode().split() == [USER, pwd.getpwnam(USER).pw_dir]
    # The secret is readable by the gate user: a refusal must come from the gate.
    assert w.ssh(f"cat {w.secret_path}").stdout.decode().count(w.secret_marker) == 1
    assert w.ssh(f"head -n 1 {w.app_log}").stdout.startswith(b"2024-12-17 13:00:00 ")
    assert w.ssh(f"touch {w.audit_path}").returncode == 0
    assert w.ssh(f"touch {w.root}/x.log").returncode != 0  # the logs are read-only
    assert w.ssh(f"cat {w.client_key}").returncode != 0
    assert w.ssh(f"head -c 1 {w.gate_entry}").stdout == b"#"  # the gate is readable
    assert w.ssh(f"touch {w.gate_entry}").returncode != 0  # and not writable
    assert w.ssh(f"touch {w.gate_entry.parent}/logtorukun/gate/x.py").returncode != 0
    auth = w.ssh('cat "$SSH_USER_AUTH"').stdout.decode()  # ExposeAuthInfo
    assert auth.startswith("publickey ssh-ed25519 ")


def test_restrict_refuses_a_tty(make_worker: MakeWorker) -> None:
    w = make_worker(command="/bin/echo forced")
    out = subprocess.run(
        w.ssh_argv("x", options=["-tt"]),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    # a forced tty (-tt) that the server refuses is fatal for the client
    assert out.returncode == 255
    assert b"PTY allocation request failed" in out.stderr


def test_host_key_change_is_refused(make_worker: MakeWorker) -> None:
    w = make_worker(command="/bin/echo forced")
    port = w.port
    w.regenerate_host_key()
    assert w.port == port and w.running
    out = w.ssh("x")
    assert out.returncode == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in out.stderr
    assert out.stdout == b""
    w.trust_host_key()
    assert w.ssh("x").stdout == b"forced\n"


def test_unknown_key_is_refused(make_worker: MakeWorker) -> None:
    a = make_worker(command="/bin/echo a")
    b = make_worker(command="/bin/echo b")
    # a's key and known_hosts against b's port: b's host key is not known
    argv = a.ssh_argv("x")
    argv[argv.index(str(a.port))] = str(b.port)
    out = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert out.returncode == 255 and b"Host key verification failed" in out.stderr
    # b's known_hosts, a's client key: not in b's authorized_keys
    argv = b.ssh_argv("x")
    argv[argv.index(str(b.client_key))] = str(a.client_key)
    out = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert out.returncode == 255 and b"Permission denied" in out.stderr


def test_restart_keeps_port_and_key_and_kills_sessions(make_worker: MakeWorker) -> None:
    w = make_worker(command=None)
    port = w.port
    slow = subprocess.Popen(w.ssh_argv("sleep 300"), stdin=subprocess.DEVNULL)
    try:
        for _ in range(500):
            tree = descendants(w.pid or 0)
            if any(_cmdline(p) == b"sleep\x00300\x00" for p in tree):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the remote sleep never started")
        w.stop()
        assert not w.running
        assert not [p for p in tree if alive(p)], "sessions left behind"
        # The client saw its session die: the connection cut (255), or, when the stop's
        # SIGTERM reached the remote command before its sshd, that command's status
        # relayed as killed by SIGTERM (128 + 15).
        assert slow.wait(10) in (255, 128 + signal.SIGTERM)
    finally:
        slow.kill()
        slow.wait()
    w.start()
    assert w.port == port
    assert w.ssh("echo back").stdout == b"back\n"


def test_start_failure_reports_the_log(make_worker: MakeWorker) -> None:
    w = make_worker(command="/bin/echo forced", start=False)
    w.host_key.write_text("not a key\n")
    with pytest.raises(RuntimeError, match=r"(?s)did not start.*host key"):
        w.start()
    assert not w.running


def test_workers_are_separate(make_worker: MakeWorker) -> None:
    a, b = make_worker(command="/bin/echo a"), make_worker(command="/bin/echo b")
    assert a.port != b.port and a.dir != b.dir and a.secret_marker != b.secret_marker
    assert (a.ssh("x").stdout, b.ssh("x").stdout) == (b"a\n", b"b\n")


def test_policy_context_restores(make_worker: MakeWorker) -> None:
    w = make_worker(start=False)
    before = w.policy_path.read_text()
    assert f'root = "{w.root}"' in before and '"*.log.*.gz"' in before
    with w.policy(w.default_policy(max_lines=5)):
        assert "max_lines = 5\n" in w.policy_path.read_text()
    assert w.policy_path.read_text() == before
    assert w.audit_records() == []


def test_shared_worker_layout(worker: Worker) -> None:
    assert worker.running
    host, key = worker.known_hosts.read_text().split(" ", 1)
    assert host == f"[127.0.0.1]:{worker.port}" and key.startswith("ssh-ed25519 ")
    line = worker.authorized_keys.read_text()
    assert line.startswith(f'restrict,command="{worker.gate_command()}" ssh-ed25519 AAAA')
    assert worker.gate_command().startswith(f"/usr/bin/python3 -IS {worker.gate_entry} --policy ")
    for p in (worker.client_key, worker.known_hosts, worker.host_key):
        assert p.stat().st_uid == 0 and p.stat().st_mode & 0o077 == 0
    app = worker.app_log.read_text()
    for hour in ("13", "14", "15"):
        for level in ("INFO ", "WARN ", "ERROR "):
            assert f"\n2024-12-17 {hour}:" in app and f" {level}" in app
    assert "\n2024-12-17 14:03:05 ERROR [payments] charge failed for order 80412\n" in app
    assert "\nTraceback (most recent call last):\n" in app
    assert worker.secret_marker in worker.secret_path.read_text()
    assert not worker.secret_path.is_relative_to(worker.root)


def test_default_policy_is_valid_for_the_gate(worker: Worker) -> None:
    data = tomllib.loads(worker.policy_path.read_text())
    assert data["audit"] == {"destination": "file", "path": str(worker.audit_path)}
    assert data["files"] == [{"root": str(worker.root), "patterns": list(PATTERNS)}]
    loaded = load_policy(str(worker.policy_path))
    assert loaded.audit.path == str(worker.audit_path)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --------------------------------------------------------------------------- the real gate


def test_gate_tail_on_the_shared_worker(worker: Worker) -> None:
    before = len(worker.audit_records())
    request = f"tail -n 5 {worker.app_log}"
    out = worker.ssh(request)
    assert out.returncode == 0, out.stderr.decode()
    expected = worker.app_log.read_bytes().splitlines(keepends=True)[-5:]
    assert out.stdout == b"".join(expected)
    new = worker.audit_since(before)
    assert any(r.get("command") == request for r in new), new  # the gate audited it


def test_gate_refuses_the_secret(worker: Worker) -> None:
    for request in [
        f"tail -n 5 {worker.secret_path}",
        f"tail -n 5 {worker.root}/../../../secret/shadow",
        f"cat {worker.secret_path}",
        f"tail -n 5 {worker.app_log}; cat {worker.secret_path}",
    ]:
        out = worker.ssh(request)
        assert out.returncode not in (0, 255), request
        assert worker.secret_marker.encode() not in out.stdout + out.stderr
