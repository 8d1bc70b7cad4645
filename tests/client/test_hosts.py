"""Host selection: names, globs, labels, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from logtorukun.client import UnknownHost
from logtorukun.client.hosts import host_by_name, select_hosts
from logtorukun.config import HostConfig, load_config


def _h(name: str, *labels: str) -> HostConfig:
    return HostConfig(
        name=name, address="10.0.0.1", key=Path("/k"), known_hosts=Path("/kh"), labels=labels
    )


HOSTS = [_h("web1", "prod"), _h("web2", "prod"), _h("db1", "prod", "db"), _h("dev1")]


def _names(patterns: list[str]) -> list[str]:
    return [h.name for h in select_hosts(HOSTS, patterns)]


def test_globs_labels_and_lists() -> None:
    assert _names(["web*"]) == ["web1", "web2"]
    assert _names(["label:db"]) == ["db1"]
    assert _names(["label:prod"]) == ["web1", "web2", "db1"]
    assert _names(["dev1,label:db"]) == ["db1", "dev1"]  # config order, once each
    assert _names(["*", "web1"]) == ["web1", "web2", "db1", "dev1"]
    assert _names(["web[12]"]) == ["web1", "web2"]


def test_no_match_is_an_error_naming_the_pattern() -> None:
    with pytest.raises(UnknownHost, match=r"no host matches 'label:nope' \(configured: web1"):
        select_hosts(HOSTS, ["web*", "label:nope"])
    with pytest.raises(UnknownHost, match="no host pattern"):
        select_hosts(HOSTS, [" , "])
    with pytest.raises(UnknownHost, match="unknown host 'Web1'"):
        host_by_name(HOSTS, "Web1")  # exact, case-sensitive


def test_from_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        '[[host]]\nname = "web1"\naddress = "10.0.0.5"\nkey = "id"\nknown_hosts = "kh"\n'
        'labels = ["prod"]\n'
    )
    config = load_config(cfg)
    assert host_by_name(config, "web1").key == tmp_path / "id"
    assert [h.name for h in select_hosts(config, ["label:prod"])] == ["web1"]
