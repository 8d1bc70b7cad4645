"""The app factory: builds the FastAPI app from the routes (api.py, pages.py, sse.py)
and the shared server object (context.py); security headers and request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..audit import AuditStore
from ..config import Config, ServerSettings
from . import api, download, history, merged, merged_history, pages, sse, suggest
from .auth import AuthStore
from .context import ERROR_NAMES, HERE, ApiError, Ctx, Server, log
from .security import (
    HSTS,
    SECURITY_HEADERS,
    AddressFailures,
    LoginThrottle,
    RateLimiter,
    TrustedProxies,
)
from .workers import Workers


class _Headers:
    """ASGI middleware: security headers on every response, and request metrics.

    Pure ASGI rather than BaseHTTPMiddleware so streamed responses (SSE) pass through
    unbuffered.
    """

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server
        extra = dict(SECURITY_HEADERS)
        if server.config.server.secure_cookies:
            extra["strict-transport-security"] = HSTS
        self.headers = [(k.encode(), v.encode()) for k, v in extra.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        path = scope.get("path", "")
        no_store = path.startswith("/api/") or not path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(self.headers)
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or (
                "/static" if path.startswith("/static/") else "unmatched"
            )
            self.server.metrics.observe(
                name, scope.get("method", ""), status, time.perf_counter() - started
            )


def _limits(settings: ServerSettings) -> dict[str, Any]:
    """The rate limit and the sign-in throttle; on PostgreSQL counted across instances."""
    if settings.database_url is None:
        return {"limiter": RateLimiter(settings.requests_per_minute), "throttle": LoginThrottle()}
    from .shared import SharedLoginThrottle, SharedRateLimiter

    url = settings.database_url
    return {
        "limiter": SharedRateLimiter(url, settings.requests_per_minute),
        "throttle": SharedLoginThrottle(url),
    }


def create_app(
    config: Config,
    *,
    audit: AuditStore | None = None,
    auth: AuthStore | None = None,
    workers: Workers | None = None,
    gate_command_for: Callable[[str], str] | None = None,
) -> FastAPI:
    """Build the app. Opening the audit store here means a server that cannot write its
    audit trail does not start (fail closed from the first second). `gate_command_for`:
    see `Workers` (certificates for hosts whose config names no gate_command)."""
    settings = config.server
    audit = audit or AuditStore.from_settings(settings)
    auth = auth or AuthStore(settings.store, busy_timeout=settings.busy_timeout)
    server = Server(
        config=config,
        audit=audit,
        auth=auth,
        workers=workers
        or Workers(
            config.hosts,
            fleet=config.fleet,
            ssh=config.ssh,
            default_command=gate_command_for,
        ),
        proxies=TrustedProxies(settings.trusted_proxies),
        **_limits(settings),
        failures=AddressFailures(settings.failures_per_minute),
    )
    server.hub = sse.FollowHub(server)
    _gauges(server)
    if config.forward:
        from ..audit.forward import forwarders_from_config, gauges

        server.forwarders = forwarders_from_config(settings.store, config.forward)
        audit.sinks.extend(server.forwarders)  # emit() only wakes the forwarder's thread
        gauges(server.metrics, server.forwarders, audit)
    if config.alerts is not None and config.alerts.rules:
        from ..audit.alerts import AlertEngine
        from ..audit.alerts import gauges as alert_gauges

        server.alerts = AlertEngine(audit, config.alerts)
        audit.sinks.append(server.alerts)  # emit() only queues the record
        alert_gauges(server.metrics, server.alerts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for fwd in server.forwarders:
            fwd.start()
        if server.alerts is not None:
            server.alerts.start()
        summaries = asyncio.create_task(_write_summaries(server))
        try:
            yield
        finally:
            summaries.cancel()
            server.write_failure_summaries(everything=True)
            # The head, to the sinks: a later truncation shows against it.
            with contextlib.suppress(Exception):
                server.audit.write_checkpoint("shutdown")
            await server.hub.close()
            await server.workers.close()
            if server.alerts is not None:
                await asyncio.to_thread(server.alerts.stop)
            for fwd in server.forwarders:
                await asyncio.to_thread(fwd.stop)

    app = FastAPI(
        title="logtorukun",
        version=__version__,
        description="Read worker logs over SSH; every read is audited. Sign in with "
        "`Authorization: Bearer TOKEN` (`logtorukun token create USER`).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(_Headers, server=server)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(sse.router)
    app.include_router(download.router)
    app.include_router(history.router)
    app.include_router(suggest.router)
    app.include_router(merged.router)
    app.include_router(merged_history.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, server, exc.status, exc.error, exc.reason)

    @app.exception_handler(sqlite3.Error)
    async def database_error(request: Request, exc: sqlite3.Error) -> Response:
        # Users, sessions and tokens unreadable (PostgreSQL down, SQLite file broken):
        # nobody can be identified, so nothing is served (fail closed), until it is back.
        server.metrics.audit_failures += 1
        reason = f"the user database cannot be read, so nothing is served: {exc}"
        return error_response(request, server, 503, ERROR_NAMES.get(503, "error"), reason)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        ctx = server.ctx(request)
        try:
            server.refuse(
                ctx,
                422,
                problems,
                action=_action(request),
                host=request.path_params.get("host"),
                params=dict(request.query_params),
            )
        except ApiError as err:
            return error_response(request, server, err.status, err.error, err.reason)
        return error_response(request, server, 422, "bad_request", problems)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        """Never a traceback or an exception text to a client: the server log has them,
        under the audit ref of the request (if it wrote one)."""
        ctx = getattr(request.state, "ctx", None)
        ref = ctx.last_ref if isinstance(ctx, Ctx) else None
        log.error(
            "internal error in %s %s (audit ref %s)",
            request.method,
            request.url.path,
            ref,
            exc_info=exc,
        )
        where = f" (audit ref {ref})" if ref else ""
        return error_response(
            request, server, 500, "internal", f"internal error; see the server log{where}"
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        reason = str(exc.detail)
        if exc.status_code == 404 and request.url.path.startswith("/api/"):
            reason = "no such API route"
        return error_response(
            request, server, exc.status_code, ERROR_NAMES.get(exc.status_code, "error"), reason
        )

    return app


async def _write_summaries(server: Server) -> None:
    """Summary records of ended intervals, without waiting for the address to return."""
    while True:
        await asyncio.sleep(min(5.0, server.failures.interval / 4))
        server.write_failure_summaries()


def _action(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    return str(path).rsplit("/", 1)[-1] or "page"


def error_response(
    request: Request, server: Server, status: int, error: str, reason: str
) -> Response:
    """JSON for the API, a small HTML page for people."""
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": error, "reason": reason}, status_code=status, headers=headers)
    if status == 401:
        from urllib.parse import quote

        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Response(status_code=303, headers={"location": f"/login?next={quote(target)}"})
    ctx = getattr(request.state, "ctx", None)
    html = server.templates.get_template("error.html").render(
        request=request,
        status=status,
        error=error,
        reason=reason,
        user=ctx.user if isinstance(ctx, Ctx) else None,
        csrf=getattr(ctx, "csrf", None),
        caps=sorted(ctx.access.capabilities) if isinstance(ctx, Ctx) and ctx.access else [],
        page="error",
    )
    return HTMLResponse(html, status_code=status)


def _gauges(server: Server) -> None:
    def up() -> list[tuple[dict[str, str], float]]:
        return [
            ({"host": n}, 1.0 if s.up else 0.0)
            for n, s in server.workers.state.items()
            if s.up is not None
        ]

    server.metrics.gauge("logtorukun_worker_up", "1 if the last contact worked.", up)
    server.metrics.gauge(
        "logtorukun_follow_upstreams",
        "Upstream follows open to workers.",
        lambda: [({}, float(len(server.hub.upstreams)))],
    )
    server.metrics.gauge(
        "logtorukun_followers",
        "Browsers following a log.",
        lambda: [({}, float(server.hub.follower_count()))],
    )
