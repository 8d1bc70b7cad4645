"""The `[ssh]` table of `server.toml`: per-user short-lived certificates instead of one
long-lived key (client/certs.py). Parsed by `config.py`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_reader import TableReader, resolve_path


@dataclass(frozen=True)
class SshSettings:
    certificates: bool = False
    # The user CA's private key (or, with agent = true, its public key beside it).
    ca_key: Path | None = None
    agent: bool = False
    validity: float = 300.0
    # The web server's addresses as the workers see them: the certificates' source-address.
    source_address: tuple[str, ...] = ()
    # Connections kept per (worker, user) beyond which the least recently used idle one
    # is closed.
    max_user_connections: int = 256


def parse_ssh(top: TableReader, raw: Any) -> SshSettings:
    s = TableReader(top.path, top.text, "ssh", raw)
    certificates = s.get("certificates", bool, False)
    ca = s.get("ca_key", str)
    agent = s.get("agent", bool, False)
    validity = s.get("validity", float, 300.0)
    sources = s.strings("source_address")
    max_conns = s.get("max_user_connections", int, 256)
    if certificates and not ca:
        s.fail("ca_key", "certificates = true needs ca_key (the user CA, see logtorukun ca init)")
    if certificates and not sources:
        s.fail(
            "source_address",
            "certificates = true needs the web server's address as workers see it "
            '(e.g. ["10.0.0.2"]): a stolen certificate is then useless elsewhere',
        )
    for src in sources:
        try:
            ipaddress.ip_network(src, strict=False)
        except ValueError:
            s.fail("source_address", f"{src!r} is not an address or CIDR block")
    if not 30 <= validity <= 86400:
        s.fail("validity", f"{validity:g} seconds is not between 30 and 86400")
    if not 1 <= max_conns <= 100_000:
        s.fail("max_user_connections", f"{max_conns} is not between 1 and 100000")
    s.done()
    return SshSettings(
        certificates=certificates,
        ca_key=resolve_path(top.path, ca) if ca else None,
        agent=agent,
        validity=validity,
        source_address=sources,
        max_user_connections=max_conns,
    )
