"""What every route shares: the server object, who is asking (`Ctx`), and the error
that ends a request (`ApiError`); `Server.record`/`refuse` write the audit trail.

Order of a data request (guard.py, then api.py/sse.py): authenticate -> rate limit ->
resolve host and source -> access check -> audit record (allow or deny; if it cannot be
written, 503 and no data) -> worker -> end record with bytes, lines and duration. A
refusal at any step is itself an audit record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request

from ..audit import AuditRef, AuditStore, AuditWriteError
from ..config import Config
from .access import Access
from .auth import AuthError, AuthStore, User
from .metrics import Metrics
from .security import (
    AddressFailures,
    LoginThrottle,
    RateLimiter,
    TrustedProxies,
)
from .workers import Workers

HERE = Path(__file__).parent
log = logging.getLogger("logtorukun.web")
AUDIT_DOWN = (
    "the audit trail cannot be written, so nothing is served "
    "(an administrator can find the cause in the server log)"
)
TOKEN_USE_INTERVAL = 60.0  # seconds between two token_used records for one token


class ApiError(Exception):
    """Ends a request with `status` and a JSON `{"error", "reason"}` (or an HTML page)."""

    def __init__(self, status: int, reason: str, error: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error or ERROR_NAMES.get(status, "error")


ERROR_NAMES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    422: "bad_request",
    429: "too_many_requests",
    500: "internal",
    502: "worker_unreachable",
    503: "audit_unavailable",
}


@dataclass(slots=True)
class Ctx:
    """Who is asking, resolved once per request (`server.ctx(request)`)."""

    user: User | None
    via: str  # "session" | "token:ID" | "proxy" | "none"
    client: str
    user_agent: str
    session_id: str | None = None
    csrf: str | None = None
    auth_problem: str | None = None
    access: Access | None = None
    last_ref: int | None = None  # seq of the last audit record this request wrote

    @property
    def name(self) -> str | None:
        return self.user.name if self.user else None

    @property
    def roles(self) -> tuple[str, ...]:
        return self.user.roles if self.user else ()

    def audit_fields(self) -> dict[str, Any]:
        return {
            "user": self.name,
            "roles": list(self.roles),
            "client": self.client,
            "user_agent": self.user_agent,
        }


@dataclass
class Server:
    """Everything the routes share; one per app."""

    config: Config
    audit: AuditStore
    auth: AuthStore
    workers: Workers
    metrics: Metrics = field(default_factory=Metrics)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    failures: AddressFailures = field(default_factory=AddressFailures)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(600))
    proxies: TrustedProxies = field(default_factory=lambda: TrustedProxies(()))
    hub: Any = None  # sse.FollowHub
    listings: Any = None  # suggest.Listings: the search page's source listings
    forwarders: list[Any] = field(default_factory=list)  # audit.forward.Forwarder
    alerts: Any = None  # audit.alerts.AlertEngine
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=str(HERE / "templates"))
    )
    _token_seen: dict[str, float] = field(default_factory=dict)

    @property
    def cookie_name(self) -> str:
        # __Host- cookies must be Secure, Path=/, without Domain: no subdomain can set it.
        return "__Host-ltk_session" if self.config.server.secure_cookies else "ltk_session"

    # -- who is asking ---------------------------------------------------------------

    def ctx(self, request: Request) -> Ctx:
        cached = getattr(request.state, "ctx", None)
        if isinstance(cached, Ctx):
            return cached
        try:
            ctx = self._authenticate(request)
        except AuthError as exc:  # the user database is gone (see audit/store.py)
            log.error("authentication impossible: %s", exc)
            ctx = Ctx(
                None,
                "none",
                self.proxies.client_address(request),
                request.headers.get("user-agent", "")[:512],
                auth_problem="sign-in is unavailable right now; try again later",
            )
        if ctx.user is not None:
            ctx.access = Access(self.config, ctx.user.roles)
        request.state.ctx = ctx
        return ctx

    def _authenticate(self, request: Request) -> Ctx:
        peer = request.client.host if request.client else None
        client = self.proxies.client_address(request)
        ua = request.headers.get("user-agent", "")[:512]
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return Ctx(None, "none", client, ua, auth_problem="use Authorization: Bearer TOKEN")
            user, tid, why = self.auth.token_user(token.strip())
            if user is None:
                # No record here: the refusal that follows is the one record (and it is
                # subject to the per-address budget of `refuse`).
                return Ctx(None, f"token:{tid}", client, ua, auth_problem=why)
            assert tid is not None
            ctx = Ctx(user, f"token:{tid}", client, ua)
            now = time.monotonic()
            if now - self._token_seen.get(tid, -1e9) >= TOKEN_USE_INTERVAL:
                self.record(
                    ctx,
                    "token_used",
                    action="token",
                    params={"token": tid},
                    decision="allow",
                    reason=why,
                )
                self.auth.touch_token(tid)
                self._token_seen[tid] = now
            return ctx
        settings = self.config.server
        if settings.proxy_user_header and self.proxies.trusts(peer):
            name = request.headers.get(settings.proxy_user_header, "").strip()
            if name:
                user = self.auth.get_user(name)
                if user is None or user.disabled:
                    why = (
                        f"the auth proxy's user {name!r} is not a logtorukun user "
                        "(logtorukun user add NAME --role ROLE --sso)"
                    )
                    return Ctx(None, "proxy", client, ua, auth_problem=why)
                sid = request.cookies.get(self.cookie_name, "")
                sess = self.auth.session(sid) if sid else None
                if sess is not None and sess.user.name == user.name:
                    return Ctx(user, "proxy", client, ua, sid, sess.csrf)
                return Ctx(user, "proxy", client, ua)
        sid = request.cookies.get(self.cookie_name, "")
        if sid:
            sess = self.auth.session(sid)
            if sess is not None:
                return Ctx(sess.user, "session", client, ua, sid, sess.csrf)
            return Ctx(None, "none", client, ua, auth_problem="session expired; sign in again")
        return Ctx(None, "none", client, ua, auth_problem="not signed in")

    # -- the audit trail -------------------------------------------------------------

    def record(self, ctx: Ctx, event: str, **fields: Any) -> AuditRef:
        """Write one record now; if it cannot be written the request ends with 503."""
        params = dict(fields.pop("params", None) or {})
        if ctx.via != "session":
            params.setdefault("auth", ctx.via)
        try:
            ref = self.audit.append(event, **ctx.audit_fields(), params=params, **fields)
        except AuditWriteError as exc:
            raise self._audit_failed(exc, event, ctx.client) from None
        ctx.last_ref = ref.seq
        return ref

    def finish(self, ref: AuditRef, event: str, outcome: Mapping[str, Any]) -> None:
        try:
            self.audit.finish(ref, event, outcome)
        except AuditWriteError as exc:
            raise self._audit_failed(exc, event, f"ref {ref.seq}") from None

    def _audit_failed(self, exc: AuditWriteError, event: str, who: str) -> ApiError:
        """The file and the cause go to the server log; the client learns only the rule."""
        self.metrics.audit_failures += 1
        log.error("audit record %s (%s) not written, request refused: %s", event, who, exc)
        return ApiError(503, AUDIT_DOWN)

    def refuse(
        self,
        ctx: Ctx,
        status: int,
        reason: str,
        *,
        action: str,
        host: str | None = None,
        source: str | None = None,
        params: Mapping[str, Any] | None = None,
        shown: str | None = None,
    ) -> ApiError:
        """Audit a refusal and return the error to raise (a failed write makes it a 503).

        `reason` is the true one, for the audit record; `shown` (default: the same) is
        what the client reads, e.g. "unknown host" for a host that exists but is not
        granted."""
        if ctx.user is None and not self.failures.note(ctx.client):
            return self.over_budget(ctx)
        self.metrics.refused[(("status", str(status)),)] += 1
        self.record(
            ctx,
            "refused",
            action=action,
            host=host,
            source=source,
            params={**(params or {}), "status": status},
            decision="deny",
            reason=reason,
        )
        return ApiError(status, shown or reason)

    def over_budget(self, ctx: Ctx) -> ApiError:
        """Anonymous or failed-authentication traffic past its per-address budget: 429,
        counted for the interval's summary record, nothing written now."""
        self.metrics.refused[(("status", "429"),)] += 1
        wait = int(self.failures.wait(ctx.client)) + 1
        return ApiError(
            429,
            f"too many anonymous or failed requests from your address; try again in {wait} s",
        )

    def write_failure_summaries(self, *, everything: bool = False) -> None:
        """One record per address and ended interval: how many failures were answered
        429 without a record of their own."""
        for address, count, first, last in self.failures.take_summaries(everything=everything):
            try:
                self.audit.append(
                    "auth_failures",
                    client=address,
                    action="auth",
                    decision="deny",
                    reason=f"{count} anonymous or failed-authentication requests refused "
                    "with 429 and counted here, not recorded one by one",
                    params={
                        "count": count,
                        "first": _iso(first),
                        "last": _iso(last),
                        "interval_s": self.failures.interval,
                    },
                )
            except AuditWriteError as exc:
                log.error("summary of %d failures from %s not written: %s", count, address, exc)

    def no_such_host(self, ctx: Ctx, host: str, reason: str, **audit: Any) -> ApiError:
        """The one answer for a host that does not exist and for one the user has no
        grant on: the same status and body, so host names cannot be probed."""
        return self.refuse(ctx, 404, reason, host=host, shown=f"unknown host {host!r}", **audit)

    def require_user(self, request: Request, action: str, **audit: Any) -> Ctx:
        """The signed-in user, after the per-user rate limit; refusals are audited."""
        ctx = self.ctx(request)
        if ctx.user is None:
            raise self.refuse(ctx, 401, ctx.auth_problem or "not signed in", action=action, **audit)
        if not self.limiter.allow(f"u:{ctx.user.name}"):
            raise self.refuse(ctx, 429, "too many requests; slow down", action=action, **audit)
        return ctx


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")
