"""`worker setup` proves its sshd block with sshd's own view (`sshd -T -C`), from the web
server's address and from another, and names the file that overrides it.

The earlier drop-ins here are what a machine may already have: `00-*.conf` sorts before
setup's `logtorukun-*.conf`, and sshd keeps the first value it reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.ops import worker_sshd
from logtorukun.ops.worker import Layout, sshd_effective
from logtorukun.ops.worker_sshd import OTHER_ADDRESS
from tests.ops.worker_box import USER, Box


def _dropin(box: Box, name: str, text: str) -> str:
    path = box.root / "etc/ssh/sshd_config.d" / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("weak", "keyword"),
    [
        ("DisableForwarding no", "DisableForwarding"),
        ("PermitTTY yes", "PermitTTY"),
        ("PasswordAuthentication yes", "PasswordAuthentication"),
        ("AuthenticationMethods any", "AuthenticationMethods"),
        ("PermitTunnel yes", "PermitTunnel"),
        ("PermitUserRC yes", "PermitUserRC"),
        ("KbdInteractiveAuthentication yes", "KbdInteractiveAuthentication"),
        ("ForceCommand /bin/sh", "ForceCommand"),
        ("ClientAliveInterval 0", "ClientAliveInterval"),
        ("MaxSessions 100", "MaxSessions"),
        ("UnusedConnectionTimeout none", "UnusedConnectionTimeout"),
    ],
)
def test_an_earlier_dropin_that_weakens_the_block_is_named(
    box: Box, capsys: pytest.CaptureFixture[str], weak: str, keyword: str
) -> None:
    path = _dropin(box, "00-site.conf", f"# the site's own\nMatch all\n    {weak}\n")
    assert main(box.setup_argv()) == 2
    err = capsys.readouterr().err
    assert f"sshd's effective {keyword} for {USER} from 127.0.0.1" in err, err
    assert f"set by {path}:3" in err and len(err.strip().splitlines()) == 1, err
    # the key is never installed behind a block sshd does not apply
    assert not Layout(box.root, USER).authorized_keys.exists()


def test_a_weakening_for_other_addresses_only_is_found_too(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _dropin(box, "00-office.conf", "Match Address 192.0.2.0/24\n    PermitTTY yes\n")
    assert main(box.setup_argv()) == 2
    err = capsys.readouterr().err
    assert f"PermitTTY for {USER} from {OTHER_ADDRESS} is 'yes'" in err and path in err, err


def test_a_second_run_rechecks_sshd_instead_of_trusting_its_own_file(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(box.setup_argv()) == 0
    assert main(box.setup_argv()) == 0
    assert "nothing to change" in capsys.readouterr().out
    path = _dropin(box, "00-later.conf", "Match all\n    AuthenticationMethods any\n")
    assert main(box.setup_argv()) == 2
    err = capsys.readouterr().err
    assert "AuthenticationMethods" in err and path in err, err


def test_the_block_bounds_idle_dead_and_crowded_connections(box: Box) -> None:
    assert main(box.setup_argv()) == 0
    for addr in ("127.0.0.1", OTHER_ADDRESS):
        eff = sshd_effective(Layout(box.root, USER), USER, addr)
        assert eff["clientaliveinterval"] == "30" and eff["clientalivecountmax"] == "4"
        assert eff["unusedconnectiontimeout"] == "600"  # OpenSSH 9.2 here
        assert eff["maxsessions"] == "10"
        assert eff["disableforwarding"] == "yes" and eff["permittunnel"] == "no"
    # a user the block is not for keeps the machine's own settings
    other = sshd_effective(Layout(box.root, USER), "someone-else", "127.0.0.1")
    assert other["clientaliveinterval"] == "0" and other["passwordauthentication"] == "yes"


def test_an_sshd_before_9_2_gets_every_bound_but_unused_connection_timeout(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSH < 9.2 rejects the keyword: the block leaves it as a comment and the check
    does not ask sshd for it (the installed 9.2 still parses the block either way)."""
    monkeypatch.setattr(worker_sshd, "sshd_version", lambda: (8, 4))
    assert main(box.setup_argv()) == 0
    block = Layout(box.root, USER).sshd_dropin.read_text()
    assert "\n    UnusedConnectionTimeout" not in block
    assert "# UnusedConnectionTimeout: not before OpenSSH 9.2" in block
    eff = sshd_effective(Layout(box.root, USER), USER)
    assert eff["unusedconnectiontimeout"] == "none" and eff["clientaliveinterval"] == "30"
    assert "unusedconnectiontimeout" not in worker_sshd.required_settings("x", Path("/k/u"))
    monkeypatch.setattr(worker_sshd, "sshd_version", lambda: (9, 2))
    assert worker_sshd.required_settings("x", Path("/k/u"))["unusedconnectiontimeout"] == "600"


def test_on_the_distributions_own_sshd_config_every_escape_is_refused(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine's /etc/ssh/sshd_config (read, never written) recreated in the throwaway
    root: Debian's `X11Forwarding yes`, `UsePAM yes` and sftp subsystem, with only the
    Include pointed at the root and a port, host key and pid file of the test's own."""
    text = Path("/etc/ssh/sshd_config").read_text()
    assert "Include /etc/ssh/sshd_config.d/*.conf" in text  # Debian's layout
    text = text.replace("/etc/ssh/sshd_config.d", f"{box.root}/etc/ssh/sshd_config.d")
    text += (
        f"\nPort {box.port}\nListenAddress 127.0.0.1\nHostKey {box.root}/etc/ssh/host_key\n"
        f"PidFile {box.root}/sshd.pid\n"
        "StrictModes no\n"  # the throwaway root lies under /tmp (world-writable)
    )
    (box.root / "etc/ssh/sshd_config").write_text(text)
    box.start_sshd()
    assert main(box.setup_argv()) == 0
    ok = box.wait_until_served(f"tail -n 1 {box.logs}/app.log")
    assert ok.stdout.startswith("2024-12-17 14:03:05")

    info = ("-o", "LogLevel=INFO")
    tty = box.ssh(f"tail -n 1 {box.logs}/app.log", "-tt", *info)
    assert "PTY allocation request failed" in tty.stderr, tty
    monkeypatch.setenv("DISPLAY", ":0")  # ssh asks for X11 only with a display to forward
    x11 = box.ssh(f"tail -n 1 {box.logs}/app.log", "-X", *info)
    assert "X11 forwarding request failed" in x11.stderr, x11
    tunnel = box.ssh("", "-W", f"127.0.0.1:{box.port}", *info)
    assert "administratively prohibited" in tunnel.stderr and "SSH-" not in tunnel.stdout
    remote = box.ssh("true", "-R", "0:127.0.0.1:9", "-o", "ExitOnForwardFailure=yes", *info)
    assert "remote port forwarding failed" in remote.stderr, remote
    # Debian's Subsystem line: ForceCommand hands it to the gate, which refuses it (exit 2;
    # sshd keeps no stderr for a subsystem, so no reason arrives)
    sftp = box.ssh("sftp", "-s")
    assert sftp.returncode == 2 and sftp.stdout == "", sftp
    password = box.ssh("true", "-o", "PreferredAuthentications=password,keyboard-interactive")
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr
