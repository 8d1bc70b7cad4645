"""`worker setup` changes only what it must and `worker remove` undoes exactly that:
ACLs (with a real logrotate run in between), grants dropped on a later run, an adopted
account, journal access, and every directory and cache setup made.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.ops import system, worker_account
from logtorukun.ops.worker import Layout
from tests.ops.worker_box import USER, Box, acl_tree, as_user

LOGROTATE = "/usr/sbin/logrotate"


def _write_as_root(path: Path, text: str, umask: int) -> None:
    """A log line written the way a daemon with this umask would (open mode 0666)."""
    subprocess.run(
        ["/bin/sh", "-c", f"printf '%s\\n' '{text}' > '{path}'"], umask=umask, check=True
    )


def _manifest(box: Box) -> dict[str, object]:
    data = json.loads(Layout(box.root, USER).manifest.read_text())
    assert isinstance(data, dict)
    return data


def test_new_files_are_opened_to_the_gate_user_and_to_no_one_else(box: Box) -> None:
    assert main(box.setup_argv()) == 0
    tight, usual = box.logs / "tight.log", box.logs / "usual.log"
    _write_as_root(tight, "written with umask 077", 0o077)
    _write_as_root(usual, "written with umask 027", 0o027)
    for f in (tight, usual):
        assert stat.S_IMODE(f.stat().st_mode) & 0o007 == 0, f"{f}: {oct(f.stat().st_mode)}"
        # `nobody` is any other account on the machine: neither file opens for it
        assert as_user("nobody", "cat", str(f)).returncode != 0, f
    read = as_user(USER, "cat", str(usual))
    assert read.returncode == 0 and read.stdout == "written with umask 027\n", read.stderr


def test_remove_restores_every_acl_byte_for_byte_across_a_logrotate_run(box: Box) -> None:
    logs = box.logs
    (logs / "app.log").chmod(0o640)
    (logs / "app.log.1").write_text("yesterday\n")
    (logs / "app.log.1").chmod(0o640)
    # what an administrator set before: an entry of their own, and a default one
    system.run([system.SETFACL, "-m", "u:nobody:r--", str(logs / "secret.txt")])
    system.run([system.SETFACL, "-d", "-m", "g:adm:r--", str(logs)])
    conf = box.root / "etc/logrotate.d/app"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"{logs}/app.log {{\n    rotate 1\n    create 0640 root root\n}}\n")
    before = acl_tree(logs)

    assert main(box.setup_argv(files="*.log,*.log.1")) == 0
    uid = pwd.getpwnam(USER).pw_uid
    late = logs / "late.log"  # created after setup: inherits the gate's default entry
    _write_as_root(late, "late", 0o022)
    assert f"user:{uid}:" in system.run([system.GETFACL, "-n", str(late)]).stdout
    state = box.root.parent / "logrotate.state"
    system.run([LOGROTATE, "-f", "-s", str(state), str(conf)])
    assert (logs / "app.log.1").read_text().startswith("2024-12-17")  # it did rotate
    assert as_user(USER, "cat", str(logs / "app.log")).returncode == 0  # the new file too

    assert main(box.remove_argv()) == 0
    late_acl = system.run([system.GETFACL, "-cn", str(late)]).stdout
    # the gate's entry is gone; the administrator's inherited adm entry (gid 4) stays
    assert late_acl.split() == ["user::rw-", "group::---", "group:4:r--", "mask::r--", "other::---"]
    late.unlink()
    assert acl_tree(logs) == before


def test_grants_dropped_on_a_later_run_are_revoked(box: Box) -> None:
    secret = box.logs / "secret.txt"
    before = acl_tree(box.logs)
    lay = Layout(box.root, USER)
    assert main(box.setup_argv("--container", "web", files="*.log,*.txt")) == 0
    assert USER in system.run([system.GETFACL, "-c", str(secret)]).stdout
    assert system.run([system.VISUDO, "-cf", str(lay.sudoers)]).returncode == 0
    assert str(lay.sudoers) in _manifest(box)["files"]  # type: ignore[operator]

    assert main(box.setup_argv(files="*.log")) == 0
    assert not lay.sudoers.exists()
    assert USER not in system.run([system.GETFACL, "-c", str(secret)]).stdout
    m = _manifest(box)
    assert str(secret) not in m["acl"] and str(lay.sudoers) not in m["files"]  # type: ignore[operator]
    assert str(box.logs / "app.log") in m["acl"]  # type: ignore[operator]

    assert main(box.remove_argv()) == 0
    assert acl_tree(box.logs) == before


def test_an_existing_account_is_refused_unless_adopted_and_given_back(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    other = f"lt-adopt{os.getpid() % 1_000_000}"
    system.run([system.USERADD, "-r", "-M", "-d", "/srv/nowhere", "-s", "/bin/bash", other])
    try:
        system.run([system.CHPASSWD, "-e"], input=f"{other}:$6$salt$notarealhash\n")
        pw_before = pwd.getpwnam(other)
        shadow_before = system.shadow_password(other)
        assert main(box.setup_argv(user=other)) == 2
        err = capsys.readouterr().err
        assert "was not created by `worker setup`" in err and "--adopt-user" in err
        assert len(err.strip().splitlines()) == 1
        assert not Layout(box.root, other).manifest.exists()
        assert pwd.getpwnam(other).pw_shell == "/bin/bash"

        assert main(box.setup_argv("--adopt-user", user=other)) == 0
        assert pwd.getpwnam(other).pw_shell == "/bin/sh"
        assert main(box.setup_argv("--adopt-user", user=other)) == 0
        assert "nothing to change" in capsys.readouterr().out
        assert main(box.remove_argv(user=other)) == 0
        after = pwd.getpwnam(other)  # kept: it was not setup's to delete
        assert (after.pw_shell, after.pw_dir) == (pw_before.pw_shell, pw_before.pw_dir)
        assert system.shadow_password(other) == shadow_before == "$6$salt$notarealhash"
    finally:
        system.run([system.USERDEL, other], ok=(0, 6))


def test_unit_grants_journal_group_and_remove_takes_it_back(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A throwaway stand-in for systemd-journal: the machine's own group is left alone.
    group = f"lt-journal{os.getpid() % 1_000_000}"
    system.run(["/usr/sbin/groupadd", "-r", group])
    monkeypatch.setattr(worker_account, "JOURNAL_GROUP", group)
    try:
        assert main(box.setup_argv("--unit", "nginx.service")) == 0
        assert USER in grp.getgrnam(group).gr_mem
        assert main(box.setup_argv()) == 0  # --unit dropped: so is the membership
        assert USER not in grp.getgrnam(group).gr_mem
        assert main(box.setup_argv("--unit", "nginx.service")) == 0
        assert main(box.remove_argv("--keep-user")) == 0
        assert USER not in grp.getgrnam(group).gr_mem
    finally:
        system.run(["/usr/sbin/groupdel", group], ok=(0, 6))


def test_remove_leaves_only_the_audit_log_owned_by_root(box: Box) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p): (p.lstat().st_mode, p.lstat().st_uid)
            for p in box.root.rglob("*")
            if p.name not in ("sshd.log", "sshd.pid")
        }

    before = snapshot()
    box.start_sshd()
    assert main(box.setup_argv()) == 0
    box.wait_until_served(f"tail -n 1 {box.logs}/app.log")
    uid = pwd.getpwnam(USER).pw_uid
    cache = Path(f"/tmp/logtorukun-gate-{uid}")
    assert cache.is_dir()  # the gate's policy cache
    assert main(box.remove_argv()) == 0

    assert not cache.exists()
    after = snapshot()
    audit = Layout(box.root, USER).audit_dir
    kept = {*list(audit.parents)[:3], audit, audit / "gate.jsonl"}  # var, var/log, ...
    assert set(after) - set(before) == {str(p) for p in kept}
    assert all(after[k] == v for k, v in before.items())
    assert all(after[str(p)][1] == 0 for p in kept), after
    assert (audit / "gate.jsonl").read_text().count("\n") >= 1


def test_a_log_swapped_for_a_symlink_is_left_alone_by_remove(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever writes the logs may plant a link to a file of root's before remove: the
    saved owner and mode of app.log must not land on that file."""
    target = box.root.parent / "root-only"
    target.write_text("root's\n")
    target.chmod(0o600)
    target_acl = system.run([system.GETFACL, "-pn", str(target)]).stdout
    assert main(box.setup_argv()) == 0
    app = box.logs / "app.log"
    app.unlink()
    app.symlink_to(target)
    assert main(box.remove_argv()) == 0
    assert f"note: {app} is not a regular file or directory now" in capsys.readouterr().out
    assert system.run([system.GETFACL, "-pn", str(target)]).stdout == target_acl
    assert not system.user_exists(USER)


def test_an_audit_file_in_an_existing_directory_leaves_that_directory_alone(box: Box) -> None:
    shared = box.root / "var/log"  # stands for /var/log: root's, used by everyone
    shared.mkdir(parents=True, mode=0o755)
    before = (shared.stat().st_mode, shared.stat().st_uid)
    audit = shared / "gate.jsonl"
    assert main(box.setup_argv("--audit-file", str(audit))) == 0
    assert (shared.stat().st_mode, shared.stat().st_uid) == before
    assert audit.stat().st_uid == pwd.getpwnam(USER).pw_uid
    assert main(box.setup_argv("--audit-file", str(audit))) == 0  # converged
    assert main(box.remove_argv()) == 0
    assert (shared.stat().st_mode, shared.stat().st_uid) == before
    assert audit.stat().st_uid == 0  # kept, handed to root
