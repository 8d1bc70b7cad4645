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
