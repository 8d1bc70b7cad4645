"""The web server's config file (`server.toml`): listen address, database, hosts, roles.

Validated once at load time so a typo is one line naming the file, the line and the key,
instead of a surprise on the first request.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client.settings import FleetSettings as FleetSettings  # [fleet], for the client
from .client.settings import HostConfig as HostConfig  # [[host]], for the client
from .config_reader import REQUIRED, TableReader, resolve_path
from .config_reader import ConfigError as ConfigError  # what callers catch
from .gate.globs import GlobError, compile_glob

if TYPE_CHECKING:
    from .config_siem import AlertSettings, ForwardConfig
    from .config_ssh import SshSettings

DEFAULT_CONFIG = "/etc/logtorukun/server.toml"
CAPABILITIES = frozenset({"tail", "search", "follow", "download", "audit"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class RoleConfig:
    name: str
    hosts: tuple[str, ...]
    sources: tuple[str, ...]
    capabilities: frozenset[str]


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:8080"
    database: Path = Path("/var/lib/logtorukun/logtorukun.db")
    # Addresses of reverse proxies whose X-Forwarded-For / user header is believed.
    trusted_proxies: tuple[str, ...] = ()
    # Header carrying the signed-in user from an auth proxy (oauth2-proxy, Authelia).
    proxy_user_header: str | None = None
    # Cookies get the Secure flag unless this is false (plain-HTTP demo on loopback).
    secure_cookies: bool = True
    # Optional copies of every audit record for a SIEM.
    audit_jsonl: Path | None = None
    audit_syslog: bool = False
    session_hours: float = 12.0
    max_follows_per_user: int = 4
    requests_per_minute: int = 600
    # Anonymous and failed-authentication requests per client address and minute that
    # are answered and audited one by one; beyond, 429 and one summary record a minute.
    failures_per_minute: int = 10
    # How often open live follows re-check their user's session, token and grants.
    follow_recheck_seconds: float = 5.0
    # A checkpoint (seq and hash of the head) goes to the audit sinks every N records.
    checkpoint_every: int = 1000
    # Seconds a write to the SQLite database waits for another process's lock on it
    # before the request fails closed (503).
    busy_timeout: float = 5.0
    # `database = "postgresql://..."`: the URL (and `database` is unused).
    database_url: str | None = None

    @property
    def store(self) -> str | Path:
        """What the audit and auth stores open: the PostgreSQL URL or the SQLite file."""
        return self.database_url or self.database


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerSettings = field(default_factory=ServerSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    hosts: tuple[HostConfig, ...] = ()
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    # SIEM forwarders and alert rules (config_siem.py).
    forward: tuple[ForwardConfig, ...] = ()
    alerts: AlertSettings | None = None
    ssh: SshSettings | None = None

    def host(self, name: str) -> HostConfig | None:
        for h in self.hosts:
            if h.name == name:
                return h
        return None


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--config` wins, then `LOGTORUKUN_CONFIG`, then the system default."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("LOGTORUKUN_CONFIG") or DEFAULT_CONFIG)


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (pass --config FILE or set LOGTORUKUN_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path, text)


def parse_config(data: dict[str, Any], path: Path, text: str = "") -> Config:
    top = TableReader(path, text, "", data)
    top.used.update({"server", "fleet", "host", "role", "forward", "alerts", "ssh"})
    top.done()

    s = TableReader(path, text, "server", data.get("server", {}))
    audit_jsonl = s.get("audit_jsonl", str)
    proxies = s.strings("trusted_proxies")
    header = s.get("proxy_user_header", str)
    if header and not proxies:
        s.fail("proxy_user_header", "needs trusted_proxies, or anyone could claim a user")
    listen = s.get("listen", str, "127.0.0.1:8080")
    if not re.fullmatch(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}", listen):
        s.fail("listen", f"{listen!r} is not HOST:PORT")
    database = s.get("database", str, "/var/lib/logtorukun/logtorukun.db")
    url = database if database.startswith(("postgresql://", "postgres://")) else None
    server = ServerSettings(
        listen=listen,
        database=resolve_path(path, "logtorukun.db" if url else database),
        database_url=url,
        trusted_proxies=proxies,
        proxy_user_header=header,
        secure_cookies=s.get("secure_cookies", bool, True),
        audit_jsonl=resolve_path(path, audit_jsonl) if audit_jsonl else None,
        audit_syslog=s.get("audit_syslog", bool, False),
        session_hours=s.get("session_hours", float, 12.0),
        max_follows_per_user=s.get("max_follows_per_user", int, 4),
        requests_per_minute=s.get("requests_per_minute", int, 600),
        failures_per_minute=s.get("failures_per_minute", int, 10),
        follow_recheck_seconds=s.get("follow_recheck_seconds", float, 5.0),
        checkpoint_every=s.get("checkpoint_every", int, 1000),
        busy_timeout=s.get("busy_timeout", float, 5.0),
    )
    for key in (
        "failures_per_minute",
        "follow_recheck_seconds",
        "checkpoint_every",
        "busy_timeout",
    ):
        if getattr(server, key) <= 0:
            s.fail(key, "must be positive")
    s.done()
    fleet = _fleet(TableReader(path, text, "fleet", data.get("fleet", {})))

    hosts: list[HostConfig] = []
    for h in top.tables("host", "hosts"):
        name = h.get("name", str, REQUIRED)
        if not _NAME.fullmatch(name):
            h.fail("name", f"{name!r}: use letters, digits, '.', '_' or '-'")
        if any(x.name == name for x in hosts):
            h.fail("name", f"host {name!r} is defined twice")
        port = h.get("port", int, 22)
        if not 0 < port < 65536:
            h.fail("port", f"{port} is not a TCP port")
        labels = h.strings("labels")
        for label in labels:
            if not _NAME.fullmatch(label):
                h.fail("labels", f"{label!r}: use letters, digits, '.', '_' or '-'")
        hosts.append(
            HostConfig(
                name=name,
                address=h.get("address", str, REQUIRED),
                port=port,
                user=h.get("user", str, "logtorukun"),
                key=resolve_path(path, h.get("key", str, REQUIRED)),
                known_hosts=resolve_path(path, h.get("known_hosts", str, REQUIRED)),
                labels=labels,
                connect_timeout=h.get("connect_timeout", float, 10.0),
                request_timeout=h.get("request_timeout", float, 60.0),
                gate_command=h.get("gate_command", str),
            )
        )
        h.done()

    roles: dict[str, RoleConfig] = {}
    for r in top.tables("role", "roles"):
        name = r.get("name", str, REQUIRED)
        if name in roles:
            r.fail("name", f"role {name!r} is defined twice")
        caps = r.strings("capabilities")
        unknown = sorted(set(caps) - CAPABILITIES)
        if unknown:
            r.fail(
                "capabilities",
                f"unknown capability {unknown[0]!r} (known: {', '.join(sorted(CAPABILITIES))})",
            )
        sources = r.strings("sources")
        for src in sources:
            if not (src.startswith(("/", "unit:", "container:")) or src == "*"):
                r.fail("sources", f"{src!r}: use an absolute path glob, unit:X or container:X")
        role_hosts = r.strings("hosts")
        for key, globs in (("hosts", role_hosts), ("sources", sources)):
            for glob in globs:
                try:
                    compile_glob(glob)
                except GlobError as exc:
                    r.fail(key, f"{glob!r}: {exc}")
        roles[name] = RoleConfig(name, role_hosts, sources, frozenset(caps))
        r.done()
    from .config_siem import parse_alerts, parse_forwards
    from .config_ssh import parse_ssh

    forward = parse_forwards(top, server.database)
    alerts = parse_alerts(top, data["alerts"], server.database) if "alerts" in data else None
    return Config(
        path=path,
        server=server,
        hosts=tuple(hosts),
        roles=roles,
        fleet=fleet,
        forward=forward,
        alerts=alerts,
        ssh=parse_ssh(top, data["ssh"]) if "ssh" in data else None,
    )


def _fleet(f: TableReader) -> FleetSettings:
    d = FleetSettings()
    fleet = FleetSettings(
        max_connecting=f.get("max_connecting", int, d.max_connecting),
        max_hosts_at_once=f.get("max_hosts_at_once", int, d.max_hosts_at_once),
        idle_timeout=f.get("idle_timeout", float, d.idle_timeout),
    )
    for key in ("max_connecting", "max_hosts_at_once"):
        if not 1 <= getattr(fleet, key) <= 10_000:
            f.fail(key, f"{getattr(fleet, key)} is out of range (1 to 10000)")
    if not 0 <= fleet.idle_timeout <= 86_400:
        f.fail("idle_timeout", f"{fleet.idle_timeout:g} is out of range (0 to 86400 seconds)")
    f.done()
    return fleet
