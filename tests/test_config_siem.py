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


ALERTS = """
[alerts]
webhook = "https://hooks.example/logtorukun"
[[alerts.rule]]
name = "bulk"
kind = "bytes"
over = 1000000
window = 3600
[[alerts.rule]]
name = "night"
kind = "outside_hours"
hours = "07:30-19:00"
days = ["mon", "tue", "wed", "thu", "fri"]
timezone = "Europe/Berlin"
[[alerts.rule]]
name = "new"
kind = "first_read"
"""


def test_alerts(tmp_path: Path) -> None:
    alerts = load(tmp_path, ALERTS).alerts  # type: ignore[attr-defined]
    bulk, night, new = alerts.rules
    assert (bulk.kind, bulk.over, bulk.window) == ("bytes", 1000000, 3600.0)
    assert (night.start_minute, night.end_minute) == (450, 1140)
    assert night.days == frozenset(range(5)) and night.timezone == "Europe/Berlin"
    assert new.kind == "first_read"
    assert alerts.state == (tmp_path / "state" / "alerts.db").resolve()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "volume"\n', "'volume': use one of"),
        ('[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "bytes"\n', "needs over = N"),
        (
            '[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "outside_hours"\n',
            'needs hours = "HH:MM-HH:MM"',
        ),
        (
            '[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "outside_hours"\n'
            'hours = "19:00-07:00"\n',
            "the start must come before the end",
        ),
        (
            '[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "outside_hours"\nhours = "7-19"\n',
            'is not "HH:MM-HH:MM"',
        ),
        (
            '[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "outside_hours"\n'
            'hours = "07:00-19:00"\ntimezone = "Mars/Olympus"\n',
            "not a known time zone",
        ),
        (
            '[alerts]\n[[alerts.rule]]\nname = "x"\nkind = "first_read"\ndays = ["monday"]\n',
            "'monday': use mon",
        ),
        ('[alerts]\nwebhook = "http://10.1.1.1/x"\n', "plain http only to this host"),
        ('[alerts]\nwebhok = "https://x/"\n', "webhok: unknown key"),
    ],
)
def test_alert_mistakes(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, extra)
