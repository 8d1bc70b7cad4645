"""`[[forward]]` and `[alerts]` in server.toml: defaults, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from logtorukun.config import ConfigError, load_config

BASE = """\
[server]
database = "state/logtorukun.db"
"""


def load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "server.toml"
    path.write_text(BASE + extra)
    return load_config(path)


def test_forward_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, '[[forward]]\nurl = "syslog+tcp://10.0.0.9:514"\n')
    (fwd,) = config.forward  # type: ignore[attr-defined]
    assert fwd.name == "siem" and fwd.batch == 500 and fwd.timeout == 10.0
    assert fwd.state == (tmp_path / "state" / "forward-siem.json").resolve()


def test_forward_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[[forward]]\nurl = "https://siem.example/in"\nca_file = "ca.pem"\ntoken_file = "t"\n',
    )
    (fwd,) = config.forward  # type: ignore[attr-defined]
    assert fwd.ca_file == (tmp_path / "ca.pem").resolve()
    assert fwd.token_file == (tmp_path / "t").resolve()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[[forward]]\n", r"server.toml:3: \[forward\] url: is required"),
        ('[[forward]]\nurl = "udp://1.2.3.4:514"\n', "use syslog\\+tcp://HOST:PORT"),
        ('[[forward]]\nurl = "syslog+tcp://1.2.3.4"\n', "give the collector's port"),
        ('[[forward]]\nurl = "http://10.0.0.9/in"\n', "plain http only to a collector on this"),
        ('[[forward]]\nurl = "syslog+tcp://h:1"\nbatch = 0\n', "batch: 0 is not between"),
        ('[[forward]]\nurl = "syslog+tcp://h:1"\nbatchsize = 5\n', "batchsize: unknown key"),
        (
            '[[forward]]\nurl = "syslog+tcp://h:1"\n[[forward]]\nurl = "https://x/"\n',
            "forwarder 'siem' is defined twice",
        ),
        ("[forward]\nurl = 1\n", "write forwarders as \\[\\[forward\\]\\] tables"),
    ],
)
def test_forward_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, extra)
