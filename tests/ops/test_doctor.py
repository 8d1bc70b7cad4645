"""`logtorukun doctor` against real sshd workers: one set up right, several set up wrong.

Each broken worker is broken in exactly one way, and the test asserts that exactly the
check for that way fails (so a check that fails for everything would not pass here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from logtorukun.cli import main
from logtorukun.ops import doctor
from tests.conftest import MakeWorker
from tests.support.sshd import Worker, free_port

HOST_CHECKS = {
    "port reachable",
    "key file mode 600",
    "connection timeout set",
    "host key pinned",
    "password authentication refused",
    "key forced to the gate",
    "injection refused",
    "file outside policy refused",
}
SERVER_CHECKS = {"audit store writable", "audit chain valid", "host key checking on"}


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
    worker: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, worker)
    code, report = _run(cfg, capsys)
    names = {c["name"] for c in report["checks"]}
    assert names == HOST_CHECKS | SERVER_CHECKS
    assert _failed(report) == set(), report
    assert report["ok"] is True and code == 0
    assert all(c["status"] == "pass" and c["fix"] == "" for c in report["checks"])

    # the human form says the same, one line per check, and a summary
    assert main(["--config", str(cfg), "doctor"]) == 0
    text = capsys.readouterr().out
    assert text.count("  PASS  ") == len(names)
    assert text.rstrip().endswith(f"{len(names)} checks: {len(names)} passed, 0 failed")


def test_password_authentication_on(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(name="doctor-password", sshd_options=["PasswordAuthentication yes"])
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1 and report["ok"] is False
    assert _failed(report) == {"password authentication refused"}
    check = next(c for c in report["checks"] if c["name"] == "password authentication refused")
    assert "password" in check["detail"] and "PasswordAuthentication no" in check["fix"]


def test_no_forced_command(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(name="doctor-shell", command=None)
    code, report = _run(_config(tmp_path, w), capsys)
    assert code == 1
    # A shell runs `echo` and the injections; `tail /etc/shadow` fails too, but by file
    # permissions (exit 1), not by a policy refusal (exit 3): that is a failure as well.
    assert _failed(report) == {
        "key forced to the gate",
        "injection refused",
        "file outside policy refused",
    }
    forced = next(c for c in report["checks"] if c["name"] == "key forced to the gate")
    assert "has a shell" in forced["detail"] and "command=" in forced["fix"]


def test_world_readable_key(
    worker: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "id_ed25519"
    shutil.copyfile(worker.client_key, key)
    key.chmod(0o644)
    code, report = _run(_config(tmp_path, worker, key=key), capsys)
    assert code == 1
    assert _failed(report) == {"key file mode 600"}
    check = next(c for c in report["checks"] if c["name"] == "key file mode 600")
    assert "0644" in check["detail"] and f"chmod 600 {key}" in check["fix"]


def test_changed_and_unknown_host_key(
    make_worker: MakeWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = make_worker(name="doctor-hostkey")
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
    worker: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _run(_config(tmp_path, worker, port=free_port()), capsys)
    assert code == 1 and _failed(report) == {"port reachable"}
    skipped = {c["name"] for c in report["checks"] if c["status"] == "skip"}
    assert "key forced to the gate" in skipped and "host key pinned" in skipped


def test_known_hosts_checking_disabled_somewhere(
    worker: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ssh_config").write_text("Host *\n    StrictHostKeyChecking no\n")
    code, report = _run(_config(tmp_path, worker), capsys)
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
