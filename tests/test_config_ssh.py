"""`[ssh]` in server.toml and the per-host gate_command: defaults and clear mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from logtorukun.config import ConfigError, load_config

BASE = '[server]\ndatabase = "state/db"\n'


def load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "server.toml"
    path.write_text(BASE + extra)
    return load_config(path)


def test_ssh_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[ssh]\ncertificates = true\nca_key = "ca/user_ca"\nsource_address = ["10.0.0.2"]\n'
        '[[host]]\nname = "w"\naddress = "10.0.0.5"\nkey = "k"\nknown_hosts = "kh"\n'
        'gate_command = "/usr/bin/python3 -IS /opt/gate.pyz --policy /etc/p.toml"\n',
    )
    ssh = config.ssh  # type: ignore[attr-defined]
    assert ssh.certificates and ssh.validity == 300.0 and ssh.agent is False
    assert ssh.ca_key == (tmp_path / "ca" / "user_ca").resolve()
    assert config.hosts[0].gate_command.startswith("/usr/bin/python3")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[ssh]\ncertificates = true\n", "needs ca_key"),
        ('[ssh]\ncertificates = true\nca_key = "k"\n', "needs the web server's address"),
        ('[ssh]\nca_key = "k"\nsource_address = ["nowhere"]\n', "not an address or CIDR"),
        ("[ssh]\nvalidity = 5\n", "5 seconds is not between 30 and 86400"),
        ("[ssh]\ncertificate = true\n", "certificate: unknown key"),
    ],
)
def test_ssh_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, extra)
