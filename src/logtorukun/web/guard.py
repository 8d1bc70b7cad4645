"""The audited guard every data route goes through: `begin` authenticates, rate-limits,
resolves the host and source, checks the grant and writes the audit record (allow or
deny) before the worker is asked anything; `end` writes the outcome with the duration.
A refusal raises `ApiError`, already audited.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ..audit import AuditRef
from ..config import HostConfig
from .access import (
    BadSource,
    Source,
    source_from,
)
from .context import Ctx, Server

_TIME = re.compile(r"[0-9A-Za-z:.+ -]{1,40}")


def server_of(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


@dataclass(slots=True)
class Allowed:
    """A request that passed every check and has its audit record."""

    ctx: Ctx
    host: HostConfig
    source: Source | None
    ref: AuditRef
    started: float


def granted_host(server: Server, ctx: Ctx, host: str, action: str, **audit: Any) -> HostConfig:
    """The host, if it exists and some role of the user grants something on it; else
    the same 404 either way (the audit record keeps the true reason)."""
    assert ctx.access is not None
    hc = server.config.host(host)
    if hc is None:
        raise server.no_such_host(ctx, host, f"unknown host {host!r}", action=action, **audit)
    if not ctx.access.host_caps(hc):
        why = f"no role grants anything on host {host} (answered as unknown)"
        raise server.no_such_host(ctx, host, why, action=action, **audit)
    return hc


def begin(
    server: Server,
    request: Request,
    *,
    action: str,
    host: str,
    capability: str,
    params: dict[str, Any],
    source: dict[str, str | None] | None = None,
    also: str | None = None,
    event: str = "read",
) -> Allowed:
    """Authenticate, check, audit; raises ApiError (already audited) on any refusal."""
    started = time.monotonic()
    params = {k: v for k, v in params.items() if v is not None}
    src_text = next((v for v in (source or {}).values() if v), None)
    ctx = server.require_user(request, action, host=host, source=src_text, params=params)
    hc = granted_host(server, ctx, host, action, source=src_text, params=params)
    src: Source | None = None
    if source is not None:
        try:
            src = source_from(**source)
        except BadSource as exc:
            raise server.refuse(
                ctx, 422, str(exc), action=action, host=host, source=src_text, params=params
            ) from None
    for name in ("pattern", "since", "until"):
        value = params.get(name)
        if isinstance(value, str) and has_control(value):
            raise server.refuse(
                ctx,
                422,
                f"{name}: control characters are not accepted",
                action=action,
                host=host,
                source=src_text,
                params=params,
            )
    for name in ("since", "until"):
        value = params.get(name)
        if isinstance(value, str) and not _TIME.fullmatch(value):
            raise server.refuse(
                ctx,
                422,
                f"{name}: not a time such as 2024-12-17 14:03:00",
                action=action,
                host=host,
                source=src_text,
                params=params,
            )
    assert ctx.access is not None
    key = src.key if src else None
    for cap in (capability, also):
        if cap is None:
            continue
        decision = ctx.access.check(hc, src, cap)
        if not decision.allowed:
            raise server.refuse(
                ctx, 403, decision.reason, action=action, host=host, source=key, params=params
            )
    ref = server.record(
        ctx,
        event,
        action=action,
        host=host,
        source=key,
        params=params,
        decision="allow",
        reason=f"{capability} granted",
    )
    return Allowed(ctx, hc, src, ref, started)


def via(a: Allowed) -> dict[str, Any]:
    return {"user": a.ctx.name, "audit": a.ref.seq}


def end(server: Server, a: Allowed, outcome: dict[str, Any], event: str = "read_end") -> None:
    outcome = {"duration_ms": round((time.monotonic() - a.started) * 1000, 3), **outcome}
    server.finish(a.ref, event, outcome)


def has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
