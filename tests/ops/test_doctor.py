"""`logtorukun doctor` against real sshd workers: one set up right, several set up wrong.

Each broken worker is broken in exactly one way, and the test asserts that exactly the
check for that way fails (so a check that fails for everything would not pass here).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logtorukun.cli import main
from logtorukun.ops import doctor, system
from logtorukun.ops.doctor_escape import ESCAPE_CHECKS
from logtorukun.ops.gate_install import GateInstall
from logtorukun.ops.system import free_port
from tests.conftest import MakeWorker
from tests.support.sshd import Worker

HOST_CHECKS = {
    "port reachable",
    "key file mode 600",
    "connection timeout set",
    "host key pinned",
    "password authentication refused",
    "key forced to the gate",
    "injection refused",
    "file outside policy refused",
    doctor.INSTALL_CHECK,
    *ESCAPE_CHECKS,
}
# The key as `worker setup --from 127.0.0.1` installs it: doctor's probe from 127.0.0.2
# must then be refused.
FROM = 'restrict,from="127.0.0.1"'
# sshd gives no answer to an agent request, so with the key forced to the gate it is
# reported as not checked (doctor_escape.py).
UNOBSERVABLE = {"agent forwarding refused"}
SERVER_CHECKS = {"audit store writable", "audit chain valid", "host key checking on"}


@pytest.fixture
def good(make_worker: MakeWorker) -> Worker:
    """A worker set up right, key limited to the web server's address."""
    return make_worker(name="doctor-good", key_options=FROM)


@pytest.fixture(autouse=True)
def _no_machine_ssh_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's own ssh_config is not under test here (one test sets its own)."""
    monkeypatch.setattr(doctor, "SSH_CONFIGS", (str(tmp_path / "ssh_config"),))


def _config(
    tmp_path: Path,
    w: Worker,
    *,
    key: Path | None = None,
    port: int | None = None,
    known_hosts: Path | None = None,
) -> Path:
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        f'[server]\ndatabase = "{tmp_path}/db/logtorukun.db"\n\n'
        f'[[host]]\nname = "{w.name}"\naddress = "127.0.0.1"\nport = {port or w.port}\n'
        f'user = "{w.user}"\nkey = "{key or w.client_key}"\n'
        f'known_hosts = "{known_hosts or w.known_hosts}"\nconnect_timeout = 5\n'
    )
    (tmp_path / "db").mkdir(exist_ok=True, mode=0o700)
    return cfg


def _run(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["--config", str(cfg), "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, report


def _failed(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if c["status"] == "fail"}


def test_correct_worker_passes_every_check(
    good: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, good)
    code, report = _run(cfg, capsys)
    names = {c["name"] for c in report["checks"]}
    assert names == HOST_CHECKS | SERVER_CHECKS
    assert _failed(report) == set(), report
    assert report["ok"] is True and code == 0
    assert {c["name"] for c in report["checks"] if c["status"] == "skip"} == UNOBSERVABLE
    assert all(
        c["status"] == "pass" and c["fix"] == ""
        for c in report["checks"]
        if c["name"] not in UNOBSERVABLE
    )

    # the human form says the same, one line per check, and a summary
    assert main(["--config", str(cfg), "doctor"]) == 0
    text = capsys.readouterr().out
    passed = len(names) - len(UNOBSERVABLE)
    assert text.count("  PASS  ") == passed
    assert text.rstrip().endswith(
        f"{len(names)} checks: {passed} passed, 0 failed, {len(UNOBSERVABLE)} not checked"
    )


def test_forwarding_and_pty_let_through_by_key_and_sshd_are_each_caught(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's worker: `restrict` gone from the key and an sshd that allows it all."""
    w = make_worker(
        name="doctor-escape",
        key_options='from="127.0.0.1"',
        sshd_options=[
            "DisableForwarding no",
            "PermitTTY yes",
            "AllowTcpForwarding yes",
            # forced to the gate, the sftp subsystem runs the gate (refused, passes)
            "Subsystem sftp /usr/lib/openssh/sftp-server",
        ],
    )
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1
    assert _failed(report) == {
        "PTY refused",
        "stdio forwarding (-W) refused",
        "local forwarding (-L) refused",
        "remote forwarding (-R) refused",
        "dynamic forwarding (-D) refused",
    }, report
    for c in report["checks"]:
        if c["status"] == "fail":
            assert f"authorized_keys/{w.user}" in c["fix"], c
            assert f"sshd_config.d/logtorukun-{w.user}.conf" in c["fix"], c
            assert "worker setup" in c["fix"], c


def test_key_without_from_is_caught_from_another_address(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(name="doctor-nofrom", key_options="restrict")
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1 and _failed(report) == {"other source address refused"}
    check = next(c for c in report["checks"] if c["name"] == "other source address refused")
    assert "accepted from 127.0.0.2" in check["detail"] and "from=" in check["fix"]


def test_password_authentication_on(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(
        name="doctor-password", key_options=FROM, sshd_options=["PasswordAuthentication yes"]
    )
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1 and report["ok"] is False
    assert _failed(report) == {"password authentication refused"}
    check = next(c for c in report["checks"] if c["name"] == "password authentication refused")
    assert "password" in check["detail"] and "PasswordAuthentication no" in check["fix"]
    # not "setup's block" (which setup would call fine) but what overrides it, and how to
    # find it
    assert "overrides it" in check["fix"] and "names that file and line" in check["fix"]


def test_no_forced_command(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(
        name="doctor-shell",
        command=None,
        key_options=FROM,
        sshd_options=["Subsystem sftp /usr/lib/openssh/sftp-server"],
    )
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1
    # A shell runs `echo` and the injections; `tail /etc/shadow` fails too, but by file
    # permissions (exit 1), not by a policy refusal (exit 3): that is a failure as well.
    assert _failed(report) == {
        "key forced to the gate",
        "injection refused",
        "file outside policy refused",
        "sftp subsystem refused",  # sftp-server itself answered
    }
    forced = next(c for c in report["checks"] if c["name"] == "key forced to the gate")
    assert "has a shell" in forced["detail"] and "command=" in forced["fix"]


def test_world_readable_key(
    good: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "id_ed25519"
    shutil.copyfile(good.client_key, key)
    key.chmod(0o644)
    code, report = _run(_config(tmp_path, good, key=key), capsys)
    assert code == 1
    assert _failed(report) == {"key file mode 600"}
    check = next(c for c in report["checks"] if c["name"] == "key file mode 600")
    assert "0644" in check["detail"] and f"chmod 600 {key}" in check["fix"]


def test_changed_and_unknown_host_key(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(name="doctor-hostkey", key_options=FROM)
    w.regenerate_host_key()  # known_hosts still has the old one: a machine in the middle
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1 and _failed(report) == {"host key pinned"}
    check = next(c for c in report["checks"] if c["name"] == "host key pinned")
    assert "differs" in check["detail"] and "hosts trust" in check["fix"]

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    code, report = _run(_config(tmp_path, w, known_hosts=empty), capsys)
    assert code == 1 and _failed(report) == {"host key pinned"}
    check = next(c for c in report["checks"] if c["name"] == "host key pinned")
    assert "no key for" in check["detail"]


def test_unreachable_worker_skips_the_probes(
    good: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _run(_config(tmp_path, good, port=free_port()), capsys)
    assert code == 1 and _failed(report) == {"port reachable"}
    skipped = {c["name"] for c in report["checks"] if c["status"] == "skip"}
    assert "key forced to the gate" in skipped and "host key pinned" in skipped


def test_known_hosts_checking_disabled_somewhere(
    good: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ssh_config").write_text("Host *\n    StrictHostKeyChecking no\n")
    code, report = _run(_config(tmp_path, good), capsys)
    assert code == 1 and _failed(report) == {"host key checking on"}
    check = next(c for c in report["checks"] if c["name"] == "host key checking on")
    assert f"{tmp_path}/ssh_config:2" in check["detail"]


def test_no_hosts_and_missing_config_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text("[server]\n")
    assert main(["--config", str(cfg), "doctor"]) == 2
    err = capsys.readouterr().err
    assert "no [[host]] configured" in err and len(err.strip().splitlines()) == 1
    assert main(["--config", str(tmp_path / "nope.toml"), "doctor"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_a_gate_install_the_gate_user_could_change_is_caught(
    good: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate reports its install as its own account sees it (ACLs included); each
    way of letting that account change what the forced command runs fails the check,
    and only it."""
    cfg = _config(tmp_path, good)
    inst = GateInstall(good.gate_entry.parent)
    build = inst.build_dir(str(inst.target()))
    uid = pwd.getpwnam(good.user).pw_uid
    module = build / "logtorukun/gate/runner.py"

    def plain_dir() -> Callable[[], None]:
        shutil.copytree(build, tmp_path / "plain")
        inst.link.unlink()
        (tmp_path / "plain").rename(inst.link)

        def undo() -> None:
            shutil.rmtree(inst.link)
            inst.switch(build.name)

        return undo

    def chmod(path: Path, mode: int) -> Callable[[], None]:
        old = path.stat().st_mode
        path.chmod(mode)
        return lambda: path.chmod(old)

    def acl(path: Path) -> Callable[[], None]:
        system.run([system.SETFACL, "-m", f"u:{good.user}:rwx", str(path)])

        def undo() -> None:
            system.run([system.SETFACL, "-b", str(path)])

        return undo

    def owner(path: Path) -> Callable[[], None]:
        os.lchown(path, uid, -1)
        return lambda: os.lchown(path, 0, -1)

    cases: list[tuple[Callable[[], Callable[[], None]], str]] = [
        (lambda: chmod(inst.versions, 0o777), f"{inst.versions} is writable by the gate user"),
        (lambda: acl(build), f"{build} is writable by the gate user"),
        (lambda: owner(inst.link), f"{inst.link} is owned by uid {uid}, not root"),
        (lambda: owner(module), f"{module} is owned by the gate user"),
        (plain_dir, f"{inst.link} is a directory, not a link to a build"),
    ]
    for breaks, says in cases:
        undo = breaks()
        try:
            code, report = _run(cfg, capsys)
        finally:
            undo()
        check = next(c for c in report["checks"] if c["name"] == doctor.INSTALL_CHECK)
        assert code == 1 and _failed(report) == {doctor.INSTALL_CHECK}, (says, report)
        assert says in check["detail"] and "worker setup" in check["fix"], check
    code, report = _run(cfg, capsys)
    assert code == 0, report
