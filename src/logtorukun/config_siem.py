"""The `[[forward]]` and `[alerts]` tables of `server.toml`: where the audit trail goes
(SIEM forwarders) and which patterns in it raise an alert. Parsed by `config.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config_reader import REQUIRED, TableReader, resolve_path

FORWARD_SCHEMES = ("syslog+tcp", "syslog+tls", "https", "http")
ALERT_KINDS = ("bytes", "hosts", "refusals", "outside_hours", "first_read")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOURS = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")


@dataclass(frozen=True)
class ForwardConfig:
    """One SIEM destination; its position (last delivered seq) lives in `state`."""

    name: str
    url: str
    state: Path
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token_file: Path | None = None
    hostname: str | None = None
    batch: int = 500
    timeout: float = 10.0
    max_backoff: float = 60.0
    poll: float = 1.0

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


@dataclass(frozen=True)
class AlertRule:
    name: str
    kind: str
    over: int = 0
    window: float = 3600.0
    # outside_hours: allowed minutes of the day [start, end) and weekdays (0 = Monday).
    start_minute: int = 0
    end_minute: int = 24 * 60
    days: frozenset[int] = frozenset(range(7))
    timezone: str = "UTC"


@dataclass(frozen=True)
class AlertSettings:
    rules: tuple[AlertRule, ...] = ()
    webhook: str | None = None
    ca_file: Path | None = None
    token_file: Path | None = None
    # first_read remembers (user, host, source) here, so a restart does not re-fire.
    state: Path | None = None
    webhook_attempts: int = 5


def parse_forwards(top: TableReader, database: Path) -> tuple[ForwardConfig, ...]:
    out: list[ForwardConfig] = []
    for f in top.tables("forward", "forwarders"):
        name = f.get("name", str, "siem")
        if not _NAME.fullmatch(name):
            f.fail("name", f"{name!r}: use letters, digits, '.', '_' or '-'")
        if any(x.name == name for x in out):
            f.fail("name", f"forwarder {name!r} is defined twice (give each a name)")
        url = f.get("url", str, REQUIRED)
        _check_url(f, url)
        state = f.get("state", str)

        batch = f.get("batch", int, 500)
        if not 1 <= batch <= 10000:
            f.fail("batch", f"{batch} is not between 1 and 10000")
        timeout = f.get("timeout", float, 10.0)
        max_backoff = f.get("max_backoff", float, 60.0)
        poll = f.get("poll", float, 1.0)
        for key, value in (("timeout", timeout), ("max_backoff", max_backoff), ("poll", poll)):
            if not 0 < value <= 3600:
                f.fail(key, f"{value} seconds is not between 0 and 3600")
        out.append(
            ForwardConfig(
                name=name,
                url=url,
                state=resolve_path(top.path, state)
                if state
                else database.parent / f"forward-{name}.json",
                ca_file=_path(f, "ca_file"),
                cert_file=_path(f, "cert_file"),
                key_file=_path(f, "key_file"),
                token_file=_path(f, "token_file"),
                hostname=f.get("hostname", str),
                batch=batch,
                timeout=timeout,
                max_backoff=max_backoff,
                poll=poll,
            )
        )
        f.done()
    return tuple(out)


def _check_url(f: TableReader, url: str) -> None:
    from .audit.transports import is_loopback

    parts = urlsplit(url)
    if parts.scheme not in FORWARD_SCHEMES:
        f.fail(
            "url",
            f"{url!r}: use syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT or https://HOST/PATH",
        )
    try:
        port = parts.port
    except ValueError:
        port = None
        f.fail("url", f"{url!r}: the port is not a number between 0 and 65535")
    if not parts.hostname:
        f.fail("url", f"{url!r}: no host")
    if parts.scheme.startswith("syslog") and port is None:
        f.fail("url", f"{url!r}: give the collector's port (514 for tcp, 6514 for tls)")
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        f.fail("url", f"{url!r}: plain http only to a collector on this host; use https")


def parse_alerts(top: TableReader, raw: Any, database: Path) -> AlertSettings:
    a = TableReader(top.path, top.text, "alerts", raw)
    webhook = a.get("webhook", str)
    if webhook is not None:
        from .audit.transports import is_loopback

        parts = urlsplit(webhook)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            a.fail("webhook", f"{webhook!r}: use https://HOST/PATH")
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            a.fail("webhook", f"{webhook!r}: plain http only to this host; use https")

    ca_file, token_file = _path(a, "ca_file"), _path(a, "token_file")
    state = _path(a, "state") or database.parent / "alerts.db"
    attempts = a.get("webhook_attempts", int, 5)
    if not 1 <= attempts <= 100:
        a.fail("webhook_attempts", f"{attempts} is not between 1 and 100")
    raw_rules = a.get("rule", list, [])
    rules: list[AlertRule] = []
    for i, table in enumerate(raw_rules):
        r = TableReader(top.path, top.text, "alerts.rule", table, i)
        rules.append(_rule(r, rules))
        r.done()
    a.done()
    return AlertSettings(
        rules=tuple(rules),
        webhook=webhook,
        ca_file=ca_file,
        token_file=token_file,
        state=state,
        webhook_attempts=attempts,
    )


def _rule(r: TableReader, before: list[AlertRule]) -> AlertRule:
    name = r.get("name", str, REQUIRED)
    if not _NAME.fullmatch(name):
        r.fail("name", f"{name!r}: use letters, digits, '.', '_' or '-'")
    if any(x.name == name for x in before):
        r.fail("name", f"alert rule {name!r} is defined twice")
    kind = r.get("kind", str, REQUIRED)
    if kind not in ALERT_KINDS:
        r.fail("kind", f"{kind!r}: use one of {', '.join(ALERT_KINDS)}")
    over = r.get("over", int, 0)
    window = r.get("window", float, 3600.0)
    if kind in ("bytes", "hosts", "refusals"):
        if "over" not in r.data:
            r.fail("over", f"a {kind} rule needs over = N (it fires above N in the window)")
        if over < 0:
            r.fail("over", "must be 0 or more")
        if not 1 <= window <= 30 * 86400:
            r.fail("window", f"{window} seconds is not between 1 and 30 days")
    start, end = 0, 24 * 60
    hours = r.get("hours", str)
    days_list = r.strings("days")
    timezone = r.get("timezone", str, "UTC")
    if kind == "outside_hours":
        if hours is None:
            r.fail("hours", 'an outside_hours rule needs hours = "HH:MM-HH:MM"')
        m = _HOURS.fullmatch(hours or "")
        if not m:
            r.fail("hours", f'{hours!r} is not "HH:MM-HH:MM" (e.g. "07:00-19:00")')
        assert m is not None
        start = int(m.group(1)) * 60 + int(m.group(2))
        end = int(m.group(3)) * 60 + int(m.group(4))
        if end > 24 * 60 or start >= end:
            r.fail("hours", f"{hours!r}: the start must come before the end, within one day")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone)
        except (ValueError, KeyError, OSError):
            r.fail("timezone", f"{timezone!r} is not a known time zone (e.g. Europe/Berlin)")
    bad = [d for d in days_list if d not in DAYS]
    if bad:
        r.fail("days", f"{bad[0]!r}: use {', '.join(DAYS)}")
    days = frozenset(DAYS.index(d) for d in days_list) if days_list else frozenset(range(7))
    return AlertRule(
        name=name,
        kind=kind,
        over=over,
        window=window,
        start_minute=start,
        end_minute=end,
        days=days,
        timezone=timezone,
    )


def _path(r: TableReader, key: str) -> Path | None:
    """An optional file name, relative to the config file."""

    value = r.get(key, str)
    return resolve_path(r.path, value) if value else None
