"""The server config loader: a mistake is one line naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.config import ConfigError, load_config

GOOD = """\
[server]
listen = "127.0.0.1:8081"
database = "state/logtorukun.db"

[[host]]
name = "web1"
address = "10.0.0.5"
key = "keys/id_ed25519"
known_hosts = "/etc/logtorukun/known_hosts"
labels = ["prod"]

[[host]]
name = "web2"
address = "10.0.0.6"
port = 2222
key = "/etc/logtorukun/id_ed25519"
known_hosts = "/etc/logtorukun/known_hosts"

[[role]]
name = "ops"
hosts = ["web*", "label:prod"]
sources = ["/var/log/worker/*.log", "unit:worker-service"]
capabilities = ["tail", "search"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_a_good_config_loads_with_relative_paths_next_to_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.server.listen == "127.0.0.1:8081"
    assert config.server.database == tmp_path / "state" / "logtorukun.db"
    web1, web2 = config.hosts
    assert (web1.port, web1.user, web1.key) == (22, "logtorukun", tmp_path / "keys/id_ed25519")
    assert (web2.port, web2.labels, web2.connect_timeout) == (2222, (), 10.0)
    assert config.roles["ops"].capabilities == frozenset({"tail", "search"})
    assert config.host("web2") is web2 and config.host("nope") is None


def test_env_and_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGTORUKUN_CONFIG", str(write(tmp_path, GOOD)))
    assert load_config().host("web1") is not None
    monkeypatch.delenv("LOGTORUKUN_CONFIG")
    with pytest.raises(ConfigError, match=r"^/etc/logtorukun/server.toml: config file not found"):
        load_config(
            "/etc/logtorukun/server.toml"
            if not Path("/etc/logtorukun/server.toml").exists()
            else tmp_path / "missing.toml"
        )


CASES = [
    (
        ("adress", "address"),
        r"server.toml:7: \[host\] adress: unknown key; did you mean 'address'\?",
    ),
    (("port = 2222", 'port = "22"'), r"server.toml:15: \[host\] port: must be int, not str"),
    (("port = 2222", "port = 70000"), r"server.toml:15: \[host\] port: 70000 is not a TCP"),
    (('name = "web2"', 'name = "web1"'), r"\[host\] name: host 'web1' is defined twice"),
    (('name = "web2"', 'name = "web 2"'), r"\[host\] name: 'web 2': use letters"),
    (('"search"]', '"search", "sudo"]'), r"\[role\] capabilities: unknown capability 'sudo'"),
    (('"unit:worker-service"', '"worker.log"'), r"\[role\] sources: 'worker.log': use an abs"),
    (
        ('listen = "127.0.0.1:8081"', 'listen = "8081"'),
        r"server.toml:2: \[server\] listen: '8081' is not HOST:PORT",
    ),
    (("listen = ", "lissen = "), r"server.toml:2: \[server\] lissen: unknown key"),
    (
        ("[server]\n", '[server]\nproxy_user_header = "X-User"\n'),
        r"proxy_user_header: needs trusted_proxies",
    ),
    (("[[role]]", "[[role]]]"), r"server.toml: not valid TOML"),
]


@pytest.mark.parametrize(("change", "message"), CASES)
def test_mistakes_are_one_line_naming_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    text = (
        GOOD.replace('address = "10.0.0.5"', 'adress = "10.0.0.5"')
        if old == "adress"
        else GOOD.replace(old, new, 1)
    )
    assert text != GOOD
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_cli_prints_the_error_without_a_traceback_wherever_config_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD.replace('address = "10.0.0.5"', 'adress = "10.0.0.5"'))
    before = ["--config", str(path), "hosts", "check"]
    for argv in (before, ["hosts", "check", "--config", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"logtorukun: {path}:7: [host] adress: unknown key; did you mean 'address'?\n"
