"""`docker logs` through the gate against a real Docker daemon and the real sudo rule.

The container writes lines; the gate runs `sudo -n /usr/bin/docker logs ...` under the
sudoers rule that `logtorukun worker setup` writes (validated with `visudo -c`),
exactly as on a worker. A container that is not allowed is refused by the gate, and
also by sudo itself if asked directly; a name that looks like an option is never one.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.ops.worker_render import sudoers_text
from tests.gate.test_bridge import BridgeClient
from tests.support.docker import docker, docker_daemon, run_container
from tests.support.sshd import USER, Worker

SUDOERS = Path("/etc/sudoers.d/logtorukun-test-docker")
STATIC = "worker-container"
TICKER = "worker-ticker"
OTHER = "other-container"


@pytest.fixture(scope="module")
def dw() -> Iterator[Worker]:
    with docker_daemon():
        run_container(STATIC, 'for i in $(seq 0 49); do echo "line $i"; done; exec sleep 3600')
        run_container(TICKER, 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.1; done')
        run_container(OTHER, 'echo "secret of the other container"; exec sleep 3600')
        for name, last in ((STATIC, "line 49"), (OTHER, "secret")):
            deadline = time.monotonic() + 30  # wait for the exact event: the line is logged
            while last not in docker("logs", name).stdout:
                assert time.monotonic() < deadline, f"{name} never logged {last!r}"
                time.sleep(0.05)
        SUDOERS.write_text(sudoers_text(USER, [STATIC, TICKER]))
        SUDOERS.chmod(0o440)
        w = Worker(name="docker")
        try:
            check = subprocess.run(
                ["/usr/sbin/visudo", "-cf", str(SUDOERS)], capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
            w.write_policy(
                w.default_policy()
                + f'\n[[docker]]\ncontainer = "{STATIC}"\n\n[[docker]]\ncontainer = "{TICKER}"\n'
            )
            w.start()
            yield w
        finally:
            w.destroy()
            SUDOERS.unlink(missing_ok=True)


def ok(w: Worker, command: str) -> list[str]:
    out = w.ssh(command)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().splitlines()


def test_tail_and_timestamps(dw: Worker) -> None:
    assert ok(dw, f"docker logs --tail 3 {STATIC}") == ["line 47", "line 48", "line 49"]
    stamped = ok(dw, f"docker logs --tail 2 --timestamps {STATIC}")
    assert [re.sub(r"^\S+ ", "", s) for s in stamped] == ["line 48", "line 49"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", s) for s in stamped)


def test_since(dw: Worker) -> None:
    assert ok(dw, f"docker logs --since 2000-01-01 {STATIC}") == [f"line {i}" for i in range(50)]
    assert ok(dw, f"docker logs --since 2099-01-01 {STATIC}") == []


def test_follow(dw: Worker) -> None:
    s = BridgeClient(dw.ssh_argv("bridge"))
    s.request(1, f"docker logs --tail 1 --follow {TICKER}")
    got = b""
    while got.count(b"\n") < 4:  # the first line, then ticks as they are written
        got += s.next_frame(lambda f: f[1] == 1 and f[0] == 17)[2]
    ticks = [int(x.split()[1]) for x in got.decode().splitlines()]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    s.send(2, 1)  # CANCEL
    _data, end = s.result(1)
    assert end["reason"] == "client went away"
    assert s.close() == (0, b"")


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (f"docker logs --tail 5 {OTHER}", Exit.REFUSED),
        ("docker logs --tail 5 -- --help", Exit.REFUSED),  # after --, only ever a name
        (f"docker logs -H tcp://127.0.0.1:1 {STATIC}", Exit.BAD_REQUEST),
        (f"docker logs --details {STATIC}", Exit.BAD_REQUEST),
        (f"docker inspect {STATIC}", Exit.BAD_REQUEST),
    ],
)
def test_refused_containers_and_options(dw: Worker, command: str, code: int) -> None:
    before = len(dw.audit_records())
    out = dw.ssh(command)
    assert out.returncode == code, out.stderr
    assert out.stdout == b"" and b"secret" not in out.stderr
    (deny,) = dw.audit_records()[before:]
    assert deny["decision"] == "deny"


def test_the_sudo_rule_itself_admits_only_the_listed_containers(dw: Worker) -> None:
    def as_gate_user(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/sbin/runuser", "-u", USER, "--", "/usr/bin/sudo", "-n", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )

    good = as_gate_user("/usr/bin/docker", "logs", "--tail", "1", "--", STATIC)
    assert good.returncode == 0 and good.stdout == "line 49\n", good.stderr
    for argv in (
        ("/usr/bin/docker", "logs", "--", OTHER),
        ("/usr/bin/docker", "inspect", STATIC),
        ("/usr/bin/docker", "logs", "--details", "--", STATIC),
        ("/usr/bin/docker", "-H", "unix:///var/run/docker.sock", "logs", "--", STATIC),
    ):
        denied = as_gate_user(*argv)
        assert denied.returncode != 0 and "secret" not in denied.stdout, argv
        assert "password is required" in denied.stderr, denied.stderr
