"""`logtorukun-gate` as a process: what sshd starts, its exit codes and its one-line reasons.

Through a real sshd where a client is involved; as a local process (the same gate under
`/usr/bin/python3 -IS`) where the test has to control the environment or bind a socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.ops.gate_install import build_gate
from logtorukun.ops.sample_logs import write_sample_logs
from tests.support.sshd import SYSTEM_PYTHON, Worker


def app_lines(w: Worker) -> list[bytes]:
    return w.app_log.read_bytes().splitlines(keepends=True)


def no_secret(w: Worker, out: subprocess.CompletedProcess[bytes]) -> None:
    assert w.secret_marker.encode() not in out.stdout
    assert w.secret_marker.encode() not in out.stderr


# ------------------------------------------------- docs/gate.md's command lines, over ssh


def test_brief_tail_n_200(worker: Worker) -> None:
    out = worker.ssh(f"tail -n 200 {worker.app_log}")
    assert (out.returncode, out.stderr) == (0, b"")
    assert out.stdout == b"".join(app_lines(worker)[-200:])
    assert out.stdout.splitlines()[-1].startswith(b"2024-12-17 15:")


def test_brief_last_100_errors(worker: Worker) -> None:
    out = worker.ssh(f"grep 'ERROR' {worker.app_log} | tail -n 100")
    assert (out.returncode, out.stderr) == (0, b"")
    errors = [ln for ln in app_lines(worker) if b"ERROR" in ln]
    assert out.stdout == b"".join(errors[-100:])
    assert b"2024-12-17 14:03:05 ERROR [payments] charge failed for order 80412\n" in out.stdout


def test_brief_one_hour(worker: Worker) -> None:
    out = worker.ssh(f"grep '2024-12-17 14:' {worker.app_log}")
    assert (out.returncode, out.stderr) == (0, b"")
    got = out.stdout.splitlines()
    assert got == [ln for ln in worker.app_log.read_bytes().splitlines() if b"2024-12-17 14:" in ln]
    assert got[0].startswith(b"2024-12-17 14:00") and got[-1].startswith(b"2024-12-17 14:5")
    assert "通知を送信しました".encode() in out.stdout  # UTF-8 passes through untouched


@pytest.mark.parametrize("command", ["", "   "])
def test_ssh_without_a_command_is_refused(worker: Worker, command: str) -> None:
    before = len(worker.audit_records())
    out = worker.ssh(command)
    assert out.returncode == Exit.BAD_REQUEST
    assert out.stdout == b""
    assert out.stderr == b"logtorukun-gate: empty command; try `help`\n"
    (rec,) = worker.audit_since(before)
    assert (rec["decision"], rec["reason"]) == ("deny", "empty command; try `help`")


def test_ssh_invalid_policy_refuses_everything(worker: Worker) -> None:
    with worker.policy("[limits]\nmax_lines = 'many'\n"):
        out = worker.ssh(f"tail -n 5 {worker.app_log}")
    assert out.returncode == Exit.CONFIG == 7
    assert out.stdout == b""
    assert (
        out.stderr
        == (
            f"logtorukun-gate: policy {worker.policy_path}: limits.max_lines must be int; "
            "refusing every request\n"
        ).encode()
    )


@pytest.mark.parametrize("audit", ["file", "syslog"])
def test_ssh_audit_unwritable_sends_no_data(worker: Worker, audit: str) -> None:
    where = worker.dir / "no/such/dir/gate.jsonl" if audit == "file" else worker.dir / "no.sock"
    policy = worker.default_policy()
    dest = f'destination = "file"\npath = "{worker.audit_path}"'
    assert dest in policy
    new = (
        f'destination = "file"\npath = "{where}"'
        if audit == "file"
        else (f'destination = "syslog"\nsocket = "{where}"')
    )
    with worker.policy(policy.replace(dest, new)):
        for command in (f"tail -n 5 {worker.app_log}", f"cat {worker.secret_path}", "sources"):
            out = worker.ssh(command)
            assert out.returncode == Exit.AUDIT == 8, out.stderr
            assert out.stdout == b""
            no_secret(worker, out)
            assert out.stderr.startswith(b"logtorukun-gate: audit record cannot be written to ")
            assert str(where).encode() in out.stderr
            assert out.stderr.endswith(b"; refusing (fail closed)\n")


# ---------------------------------------------------------------- local gate process


class Local:
    """The gate run the way sshd runs it, with an environment the test chooses."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.gate_entry = build_gate(base / "gate", python=SYSTEM_PYTHON)
        self.root = base / "logs"
        write_sample_logs(self.root)
        self.app_log = self.root / "app.log"
        self.audit = base / "gate.jsonl"
        self.state = base / "state"
        self.state.mkdir(mode=0o700)
        self.tmp = base / "tmp"
        self.tmp.mkdir(mode=0o700)
        self.policy = self.write_policy(f'destination = "file"\npath = "{self.audit}"')

    def write_policy(self, audit: str, name: str = "policy.toml") -> Path:
        p = self.base / name
        p.write_text(
            f'[limits]\nstate_dir = "{self.state}"\n[audit]\n{audit}\n'
            f'[[files]]\nroot = "{self.root}"\npatterns = ["*.log", "*.log.*.gz"]\n'
        )
        return p

    def run(
        self,
        command: str | None,
        *args: str,
        policy: Path | None = None,
        env: dict[str, str] | None = None,
        no_args: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """`args` replace `--policy POLICY`; `no_args` runs the gate with no argument at all."""
        environ = {"PATH": "/usr/bin:/bin", "TMPDIR": str(self.tmp), **(env or {})}
        if command is not None:
            environ["SSH_ORIGINAL_COMMAND"] = command
        argv = [SYSTEM_PYTHON, "-IS", str(self.gate_entry)]
        if not no_args:
            argv += args if args else ["--policy", str(policy or self.policy)]
        return subprocess.run(
            argv,
            env=environ,
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    yield Local(tmp_path_factory.mktemp("main"))


def test_local_gate_serves_a_request(local: Local) -> None:
    out = local.run(f"tail -n 2 {local.app_log}")
    assert (out.returncode, out.stderr) == (0, b"")
    assert out.stdout == b"".join(local.app_log.read_bytes().splitlines(keepends=True)[-2:])


def test_unset_command_is_refused_and_audited(local: Local) -> None:
    before = len(local.records()) if local.audit.exists() else 0
    out = local.run(None)
    assert (out.returncode, out.stdout) == (Exit.BAD_REQUEST, b"")
    assert out.stderr == b"logtorukun-gate: empty command; try `help`\n"
    (rec,) = local.records()[before:]
    assert rec["decision"] == "deny" and rec["command"] == ""


def test_the_request_never_comes_from_argv(local: Local) -> None:
    out = local.run(None, "--policy", str(local.policy), "tail", "-n", "1", str(local.app_log))
    assert out.returncode == Exit.BAD_REQUEST and out.stdout == b""
    assert out.stderr.startswith(b"logtorukun-gate: unknown argument 'tail'")
    out = local.run(None, "--policy")
    assert out.stderr == b"logtorukun-gate: --policy needs a PATH\n"


@pytest.mark.parametrize(
    ("policy_text", "problem"),
    [
        (None, "file not found"),
        ("[limits\n", "Expected ']'"),
        ('[[files]]\nroot = "relative"\n', "files[0].root must be an absolute path"),
        ("[limits]\nmax_seconds = inf\n", "limits.max_seconds must be a finite number"),
    ],
)
def test_missing_or_invalid_policy_is_exit_7_naming_the_file(
    local: Local, tmp_path: Path, policy_text: str | None, problem: str
) -> None:
    path = tmp_path / "policy.toml"
    if policy_text is not None:
        path.write_text(policy_text)
    command = f"tail -n 1 {local.app_log}"
    for out in (
        local.run(command, "--policy", str(path)),
        local.run(command, f"--policy={path}"),
        local.run(command, env={"LOGTORUKUN_POLICY": str(path)}, no_args=True),
    ):
        assert out.returncode == Exit.CONFIG, out.stderr
        assert out.stdout == b""
        line = out.stderr.decode()
        assert line.count("\n") == 1 and line.startswith(f"logtorukun-gate: policy {path}: ")
        assert problem in line and line.endswith("; refusing every request\n")


def test_syslog_gets_one_record_per_refusal_with_priority_86(local: Local, tmp_path: Path) -> None:
    sock_path = tmp_path / "log.sock"
    policy = local.write_policy(f'destination = "syslog"\nsocket = "{sock_path}"', "syslog.toml")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(sock_path))
        server.settimeout(0.2)
        out = local.run("cat /etc/shadow", policy=policy)
        assert out.returncode == Exit.REFUSED and out.stdout == b""
        assert out.stderr == b"logtorukun-gate: /etc/shadow is not allowed by the policy\n"
        got = []
        try:
            while True:
                got.append(server.recv(65536).decode())
        except TimeoutError:
            pass
        assert len(got) == 1
        assert got[0].startswith("<86>")
        rec = json.loads(got[0].partition(": ")[2])
        assert (rec["decision"], rec["command"]) == ("deny", "cat /etc/shadow")

        out = local.run(f"tail -n 1 {local.app_log}", policy=policy)
        assert out.returncode == 0 and out.stdout
        first, second = (
            json.loads(server.recv(65536).decode().partition(": ")[2]) for _ in range(2)
        )
        assert (first["event"], second["event"]) == ("request", "end")
        assert second["bytes"] == len(out.stdout)


def test_no_syslog_listening_means_no_data(local: Local, tmp_path: Path) -> None:
    policy = local.write_policy(f'destination = "syslog"\nsocket = "{tmp_path}/none"', "n.toml")
    out = local.run(f"tail -n 5 {local.app_log}", policy=policy)
    assert out.returncode == Exit.AUDIT and out.stdout == b""
    assert (
        out.stderr
        == (
            f"logtorukun-gate: audit record cannot be written to syslog socket "
            f"{tmp_path}/none: No such file or directory; refusing (fail closed)\n"
        ).encode()
    )


def test_version_and_help(local: Local) -> None:
    out = local.run(None, "--version")
    assert out.returncode == 0 and out.stdout.startswith(b"logtorukun-gate ")
    out = local.run(None, "--help")
    assert out.returncode == 0 and b"SSH_ORIGINAL_COMMAND" in out.stdout


def test_stdout_is_only_data_and_stderr_one_line(local: Local) -> None:
    """Every refusal: nothing on stdout, exactly one `logtorukun-gate: ` line on stderr."""
    for command in (
        "nope",
        "tail -n 5 /etc/shadow",
        f"tail -n 5 {local.root}/x.log",
        f"grep -E '(a)\\1' {local.app_log}",
        "tail -n 1 /x\udcff",
    ):
        env_command = command.encode("utf-8", "surrogateescape")
        out = subprocess.run(
            [SYSTEM_PYTHON, "-IS", str(local.gate_entry), "--policy", str(local.policy)],
            env={
                b"PATH": b"/usr/bin",
                b"TMPDIR": str(local.tmp).encode(),
                b"SSH_ORIGINAL_COMMAND": env_command,
            },
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert out.returncode in (Exit.BAD_REQUEST, Exit.REFUSED, Exit.NOT_FOUND), out
        assert out.stdout == b""
        assert out.stderr.startswith(b"logtorukun-gate: ") and out.stderr.count(b"\n") == 1


def test_bridge_is_chosen_by_the_command_only(local: Local) -> None:
    """`bridge` (with spaces around) starts a session: a HELLO frame, then EOF ends it."""
    from logtorukun.gate.protocol import HELLO, FrameReader

    out = local.run("  bridge ")
    assert out.returncode == 0, out.stderr
    ((ftype, rid, payload),) = FrameReader().feed(out.stdout)
    assert (ftype, rid) == (HELLO, 0) and json.loads(payload)["protocol"] == 1
    assert os.path.exists(local.audit)
