"""What the SSH client needs to reach workers: one host's settings and the fleet-wide
bounds. config.py builds these from `server.toml` (`[[host]]`, `[fleet]`); the client
never reads the server's config file itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    key: Path
    known_hosts: Path
    port: int = 22
    user: str = "logtorukun"
    labels: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    # With [ssh] certificates: the force-command in each certificate, byte for byte the
    # command= of the worker's principals line (None: what `worker setup` installs).
    gate_command: str | None = None


@dataclass(frozen=True)
class FleetSettings:
    """`[fleet]`: how a big fleet is reached without flooding the web server or holding
    hundreds of idle SSH connections. Used by the client pool, the CLI and the web server."""

    # SSH handshakes (key exchange + authentication) in progress at once, all hosts.
    max_connecting: int = 32
    # Hosts a cross-host search (`grep --hosts`, the web's search) works on at once.
    max_hosts_at_once: int = 64
    # A connection with no request for this many seconds is closed (0: kept for ever).
    idle_timeout: float = 300.0


class Fleet(Protocol):
    """Hosts and fleet settings together (a loaded `config.Config` is one)."""

    @property
    def hosts(self) -> Sequence[HostConfig]: ...

    @property
    def fleet(self) -> FleetSettings: ...
