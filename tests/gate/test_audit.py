"""audit.py: who asked (SSH_CLIENT, SSH_USER_AUTH), one JSON line per event, fail closed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from logtorukun.gate.audit import AuditLog, identity_from_env
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.policy import AuditSettings
from tests.support.sshd import Worker


def keygen(path: Path, *extra: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path), *extra],
        check=True,
        capture_output=True,
    )


def fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def auth_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "auth"
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------- identity


def test_client_address_and_key_fingerprint(tmp_path: Path) -> None:
    keygen(tmp_path / "id")
    kind, blob = (tmp_path / "id.pub").read_text().split()[:2]
    ident = identity_from_env(
        {
            "SSH_CLIENT": "192.0.2.10 51234 22",
            "SSH_USER_AUTH": auth_file(tmp_path, f"publickey {kind} {blob}\n"),
        }
    )
    assert ident == {
        "client": "192.0.2.10",
        "client_port": "51234",
        "key_type": "ssh-ed25519",
        "key": fingerprint(tmp_path / "id.pub"),
    }


def test_certificate_key_id_and_serial(tmp_path: Path) -> None:
    keygen(tmp_path / "ca")
    keygen(tmp_path / "id")
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(tmp_path / "ca"),
            "-I",
            "alice@example",
            "-n",
            "logtorukun",
            "-z",
            "4242",
            str(tmp_path / "id.pub"),
        ],
        check=True,
        capture_output=True,
    )
    kind, blob = (tmp_path / "id-cert.pub").read_text().split()[:2]
    assert kind == "ssh-ed25519-cert-v01@openssh.com"
    ident = identity_from_env({"SSH_USER_AUTH": auth_file(tmp_path, f"publickey {kind} {blob}")})
    assert (ident["cert_key_id"], ident["cert_serial"]) == ("alice@example", 4242)
    # `key` is the certified key's fingerprint, as `ssh-keygen -l` of the plain key and
    # sshd's log show it; `cert` identifies the issued certificate itself.
    assert ident["key"] == fingerprint(tmp_path / "id.pub")
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    assert ident["cert"] == "SHA256:" + digest.rstrip("=")
    assert ident["cert"] != ident["key"]


@pytest.mark.parametrize(
    "content",
    [
        "",
        "password\n",
        "publickey ssh-ed25519\n",
        "publickey ssh-ed25519 !!notbase64!!\n",
        "keyboard-interactive\npublickey ssh-ed25519 AAAA\n",
    ],
)
def test_odd_auth_info_gives_no_key(tmp_path: Path, content: str) -> None:
    ident = identity_from_env({"SSH_USER_AUTH": auth_file(tmp_path, content)})
    assert "key" not in ident


def test_truncated_certificate_gives_the_key_but_no_cert_fields(tmp_path: Path) -> None:
    blob = base64.b64encode(b"\x00\x00\x00\x20ssh-ed25519-cert-v01@openssh.com\x00").decode()
    ident = identity_from_env(
        {"SSH_USER_AUTH": auth_file(tmp_path, f"publickey ssh-ed25519-cert-v01@openssh.com {blob}")}
    )
    assert ident["key"].startswith("SHA256:") and "cert_serial" not in ident


def test_no_environment_no_identity(tmp_path: Path) -> None:
    assert identity_from_env({}) == {}
    assert identity_from_env({"SSH_USER_AUTH": str(tmp_path / "gone")}) == {}


# ---------------------------------------------------------------- the file


def test_records_are_single_escaped_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "gate.jsonl"
    log = AuditLog(AuditSettings("file", str(path)))
    nasty = "tail -n 1 /x\x1b[2J\x07\n\r\x00\x7f\u2028\u202e\udcff end"
    log.write({"command": nasty, "n": 1})
    log.write({"command": "second"})
    log.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2
    assert all(b >= 0x20 and b != 0x7F for b in raw.replace(b"\n", b"")), raw
    assert raw.isascii()
    first = raw.splitlines()[0]
    for esc in (
        rb"\u001b",
        rb"\u0007",
        rb"\n",
        rb"\r",
        rb"\u0000",
        rb"\u007f",
        rb"\u2028",
        rb"\u202e",
        rb"\udcff",
    ):
        assert esc in first
    assert json.loads(first)["command"] == nasty
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_audit_file_opens_append_only_and_never_through_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "gate.jsonl"
    path.write_text('{"old":1}\n')
    log = AuditLog(AuditSettings("file", str(path)))
    log.write({"new": 2})
    log.close()
    assert path.read_text() == '{"old":1}\n{"new":2}\n'
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    log = AuditLog(AuditSettings("file", str(link)))
    with pytest.raises(GateError) as info:
        log.write({"x": 1})
    assert info.value.code == Exit.AUDIT
    assert f"audit record cannot be written to {link}" in info.value.reason
    assert path.read_text() == '{"old":1}\n{"new":2}\n'


@pytest.mark.parametrize("where", ["missing-dir", "directory", "read-only-fs"])
def test_unwritable_destination_fails_closed(tmp_path: Path, where: str) -> None:
    target = {
        "missing-dir": tmp_path / "no/such/dir/gate.jsonl",
        "directory": tmp_path,
        "read-only-fs": Path("/proc/self/gate.jsonl"),
    }[where]
    log = AuditLog(AuditSettings("file", str(target)))
    with pytest.raises(GateError) as info:
        log.write({"x": 1})
    exc = info.value
    assert exc.code == Exit.AUDIT == 8
    assert exc.reason.startswith(f"audit record cannot be written to {target}: ")
    assert exc.reason.endswith("; refusing (fail closed)") and "\n" not in exc.reason


def test_concurrent_gates_never_interleave_records(tmp_path: Path) -> None:
    path = tmp_path / "gate.jsonl"
    code = textwrap.dedent(f"""
        import sys
        from logtorukun.gate.audit import AuditLog
        from logtorukun.gate.policy import AuditSettings
        log = AuditLog(AuditSettings("file", {str(path)!r}))
        for i in range(300):
            log.write({{"writer": sys.argv[1], "i": i, "pad": "x" * 5000}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1200
    for n in range(4):
        assert [r["i"] for r in records if r["writer"] == str(n)] == list(range(300))


# ---------------------------------------------------------------- syslog


def test_syslog_datagram_with_authpriv_info_priority(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        log = AuditLog(AuditSettings("syslog", socket=path))
        log.write({"event": "request", "command": "tail\x1b"})
        log.close()
        msg = server.recv(65536).decode()
    assert msg.startswith("<86>")  # authpriv (10) * 8 + info (6)
    head, _, body = msg.partition(": ")
    assert head.endswith(f" logtorukun-gate[{os.getpid()}]")
    assert json.loads(body) == {"event": "request", "command": "tail\x1b"}


@pytest.mark.parametrize("kind", ["missing", "stream", "regular-file"])
def test_syslog_unreachable_fails_closed(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / "log.sock")
    keep = None
    if kind == "stream":
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.bind(path)
        keep.listen()
    elif kind == "regular-file":
        Path(path).write_text("")
    try:
        log = AuditLog(AuditSettings("syslog", socket=path))
        with pytest.raises(GateError) as info:
            log.write({"x": 1})
    finally:
        if keep:
            keep.close()
    assert info.value.code == Exit.AUDIT
    assert info.value.reason.startswith(f"audit record cannot be written to syslog socket {path}")


# ---------------------------------------------------------------- over a real sshd


def test_ssh_records_who_read_what(worker: Worker) -> None:
    before = len(worker.audit_records())
    out = worker.ssh(f"tail -n 3 {worker.app_log}")
    assert out.returncode == 0
    start, end = worker.audit_since(before)
    assert (start["event"], start["decision"], start["mode"]) == ("request", "allow", "oneshot")
    assert start["command"] == f"tail -n 3 {worker.app_log}"
    assert start["target"] == str(worker.app_log)
    assert start["client"] == "127.0.0.1" and start["client_port"].isdigit()
    assert start["key_type"] == "ssh-ed25519"
    assert start["key"] == fingerprint(worker.client_key.with_name("id_ed25519.pub"))
    assert end["id"] == start["id"] and end["event"] == "end"
    assert (end["exit"], end["lines"], end["bytes"]) == (0, 3, len(out.stdout))
    assert end["truncated"] is False and isinstance(end["duration_ms"], float)
    assert start["ts"] <= end["ts"]


def test_ssh_refusal_is_recorded_with_control_bytes_escaped(worker: Worker) -> None:
    before = len(worker.audit_records())  # the file may not exist yet
    command = f"tail -n 1 {worker.app_log}\x1b]0;pwned\x07\t;cat {worker.secret_path}"
    out = worker.ssh(command)
    assert out.returncode == Exit.BAD_REQUEST
    assert out.stderr == b"logtorukun-gate: control character 0x1b in the command\n"
    assert worker.secret_marker.encode() not in out.stdout + out.stderr
    # Only this request's line: a late record of an earlier client may sit beside it.
    new = worker.audit_path.read_bytes().split(b"\n")[before:]
    (added,) = [ln for ln in new if b"pwned" in ln]
    assert b"\x1b" not in added and b"\x07" not in added
    assert b"\\u001b]0;pwned\\u0007\\t;cat" in added
    rec = json.loads(added)
    assert rec["command"] == command and rec["decision"] == "deny" and rec["exit"] == 2
    assert rec["reason"] == "control character 0x1b in the command"
