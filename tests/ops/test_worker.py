"""`logtorukun worker setup|remove` against a real sshd started from a throwaway config dir.

The sshd runs from `<root>/etc/ssh/sshd_config`, which includes the drop-in directory the
command writes to, so what is tested is what sshd really applies; the machine's own sshd
is never touched (`--root`).
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.ops import system
from logtorukun.ops.system import free_port, keygen
from logtorukun.ops.worker import Layout, sshd_effective
from tests.ops.worker_box import SECRET, USER, Box
from tests.ops.worker_box import acl as _acl
from tests.ops.worker_box import tree as _tree


def test_dry_run_changes_nothing_and_lists_every_change(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(box.root), _acl(box.logs / "app.log")
    assert main(box.setup_argv("--dry-run")) == 0
    out = capsys.readouterr().out
    assert (_tree(box.root), _acl(box.logs / "app.log")) == before
    assert not system.user_exists(USER)
    for expected in (
        f"system user {USER}",
        "logtorukun-gate.py",
        f"policy-{USER}.toml",
        'restrict,from="127.0.0.1",command="/usr/bin/python3 -IS',
        f"Match User {USER}",
        "DisableForwarding yes",
        "PermitTTY no",
        "PermitUserRC no",
        "ExposeAuthInfo yes",
        "AuthenticationMethods publickey",
        f"ACL user:{USER}:r-- on {box.logs}/app.log",
        f"default:group::---,default:other::---,default:user:{USER}:r-- on {box.logs}\n",
        "create 0640",
    ):
        assert expected in out, expected
    assert "secret.txt" not in out


def test_setup_reloads_sshd_and_the_gate_serves_only_the_policy(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.start_sshd()
    # before: the user does not exist, so nothing gets in
    assert box.ssh(f"tail -n 1 {box.logs}/app.log").returncode == 255

    assert main(box.setup_argv()) == 0
    out = capsys.readouterr().out
    assert "reloaded sshd" in out

    # sshd re-executes itself on SIGHUP; wait (bounded) until the new config answers
    deadline = time.monotonic() + 30
    while (r := box.ssh(f"tail -n 1 {box.logs}/app.log")).returncode != 0:
        assert time.monotonic() < deadline, r.stderr + (box.root / "sshd.log").read_text()[-3000:]
        time.sleep(0.1)
    assert r.stdout == "2024-12-17 14:03:05 ERROR [payments] charge failed\n"

    refused = box.ssh(f"cat {box.logs}/secret.txt")  # readable by anyone, but not in the policy
    assert refused.returncode == 3 and SECRET not in refused.stdout
    shell = box.ssh(f"tail -n 1 {box.logs}/app.log; cat {box.logs}/secret.txt")
    assert shell.returncode == 2 and SECRET not in shell.stdout
    assert box.ssh("id").returncode == 2

    # The Match block overrides the machine-wide `PasswordAuthentication yes` for this user.
    none = box.ssh("true", "-o", "PreferredAuthentications=none")
    assert "Permission denied (publickey)" in none.stderr
    # and no tunnels: a port forward is refused
    fwd = box.ssh("true", "-o", "ExitOnForwardFailure=yes", "-L", f"{free_port()}:127.0.0.1:22")
    assert fwd.returncode != 0
    eff = sshd_effective(Layout(box.root, USER), USER)
    assert eff["disableforwarding"] == "yes"
    assert eff["permittty"] == "no" and eff["permituserrc"] == "no"
    assert eff["exposeauthinfo"] == "yes" and eff["authenticationmethods"] == "publickey"
    assert eff["passwordauthentication"] == "no"
    assert "logtorukun-gate.py --policy" in eff["forcecommand"]

    pw = pwd.getpwnam(USER)
    assert pw.pw_shell == "/bin/sh"
    assert system.shadow_password(USER) == "*"
    # the user cannot touch its own key file or policy
    layout = Layout(box.root, USER)
    for p in (layout.authorized_keys, layout.policy, layout.sshd_dropin):
        st = p.stat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, p

    # A second run changes nothing.
    assert main(box.setup_argv()) == 0
    assert "nothing to change" in capsys.readouterr().out

    # A rotation the way logrotate `create 0640` does it: the new file inherits the grant.
    os.rename(box.logs / "app.log", box.logs / "app.log.1")
    fd = os.open(box.logs / "app.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, b"2024-12-17 15:00:00 INFO after rotation\n")
    os.close(fd)
    r = box.ssh(f"tail -n 1 {box.logs}/app.log")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2024-12-17 15:00:00 INFO after rotation\n"

    # remove undoes it: no user, no drop-in, no ACL left, and the key no longer works.
    assert main(["worker", "remove", "--root", str(box.root), "--user", USER]) == 0
    assert not system.user_exists(USER)
    assert not layout.sshd_dropin.exists() and not layout.authorized_keys.exists()
    assert USER not in _acl(box.logs) and USER not in _acl(box.logs / "app.log.1")
    deadline = time.monotonic() + 15
    while (r := box.ssh(f"tail -n 1 {box.logs}/app.log.1")).returncode != 255:
        assert time.monotonic() < deadline, r
        time.sleep(0.1)
    assert main(["worker", "remove", "--root", str(box.root), "--user", USER]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_rejected_sshd_config_is_rolled_back(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = box.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + "NoSuchKeyword yes\n")
    assert main(box.setup_argv()) == 2
    err = capsys.readouterr().err
    assert err.startswith("logtorukun: sshd -t rejected the config:"), err
    assert len(err.strip().splitlines()) == 1
    assert not Layout(box.root, USER).sshd_dropin.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--files", "logs:*.log"], "ROOT must be an absolute path"),
        (["--files", "/var/log/x"], "write ROOT:PATTERN"),
        (["--files", "/var/log:../etc/shadow"], "PATTERN is a glob relative to ROOT"),
        (["--from", 'a" b'], "an address, CIDR or host name pattern"),
        (["--unit=-x"], "is not a systemd unit name"),
        (["--container", "a b"], "is not a container name"),
        (["--user", "root"], "pick a dedicated user"),
        (["--audit-file", "rel.jsonl"], "use an absolute path or 'syslog'"),
    ],
)
def test_bad_input_is_one_line(
    box: Box, capsys: pytest.CaptureFixture[str], change: list[str], message: str
) -> None:
    argv = box.setup_argv("--dry-run")
    flag = change[0]
    if flag in ("--files", "--from", "--user") and flag in argv:
        i = argv.index(flag)
        del argv[i : i + 2]
    assert main([*argv, *change]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_key_must_be_a_public_key_and_from_is_required(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = box.setup_argv("--dry-run")
    argv[argv.index("--key") + 1] = str(box.key)  # the private half
    assert main(argv) == 2
    assert "this is a private key; pass the .pub file" in capsys.readouterr().err
    argv = box.setup_argv("--dry-run")
    i = argv.index("--from")
    del argv[i : i + 2]
    assert main(argv) == 2
    assert "--from is required" in capsys.readouterr().err


def test_sshd_config_without_include_is_refused(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = box.root / "etc/ssh/sshd_config"
    cfg.write_text("\n".join(cfg.read_text().splitlines()[1:]) + "\n")
    assert main(box.setup_argv("--dry-run")) == 2
    assert "has no `Include" in capsys.readouterr().err


def test_key_rotation_new_beside_old_then_old_removed(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md's procedure: both keys, switch, then only the new one."""
    new = tmp_path / "web_key_new"
    keygen(new, "web-new")
    old = box.key
    box.start_sshd()
    argv = box.setup_argv()
    argv[argv.index("--key") + 1 : argv.index("--key") + 1] = [f"{old}.pub", "--key"]
    argv[argv.index(f"{box.key}.pub")] = f"{new}.pub"
    assert main(argv) == 0
    lines = Layout(box.root, USER).authorized_keys.read_text().splitlines()
    assert len(lines) == 2 and all(
        ln.startswith('restrict,from="127.0.0.1",command=') for ln in lines
    )

    def works(key: Path) -> bool:
        box.key = key
        return box.ssh(f"tail -n 1 {box.logs}/app.log").returncode == 0

    deadline = time.monotonic() + 30
    while not works(new):  # until sshd has re-executed with the Match block (SIGHUP)
        assert time.monotonic() < deadline, (box.root / "sshd.log").read_text()[-3000:]
        time.sleep(0.1)
    assert works(old)
    # authorized_keys is read on every connection: from here on no reload is involved
    argv = box.setup_argv()
    argv[argv.index("--key") + 1] = f"{new}.pub"
    assert main(argv) == 0
    assert "update" in capsys.readouterr().out
    assert works(new) and not works(old)
