"""Pages for people (server-rendered shells; the data comes from /api with the same
checks), sign-in and sign-out, `/healthz` and `/metrics`.

A page that names a host or source (a deep link to the viewer) checks the grant before
it renders anything, so a link passed to someone without access shows a refusal, not
an empty viewer that then fails.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .access import READ_CAPS, SEARCH, BadSource, source_from
from .context import ApiError, Ctx, Server
from .guard import granted_host, server_of
from .merge import MAX_SOURCES
from .security import PRE_COOKIE, csrf_ok, same_origin

router = APIRouter(include_in_schema=False)
log = logging.getLogger("logtorukun.web")
# argon2 needs 64 MiB per check: two at a time keeps a password spray from eating memory.
_HASHING = threading.BoundedSemaphore(2)


def _safe_next(target: str | None) -> str:
    """Only a local path: `//evil.example` or `https://...` would be an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _render(
    server: Server,
    request: Request,
    template: str,
    ctx: Ctx | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    user = ctx.user if ctx else None
    caps = sorted(ctx.access.capabilities) if ctx and ctx.access else []
    html = server.templates.get_template(template).render(
        request=request, user=user, csrf=ctx.csrf if ctx else None, caps=caps, **values
    )
    return HTMLResponse(html, status_code=status)


def _page_ctx(server: Server, request: Request, page: str) -> tuple[Ctx, Response | None]:
    """The signed-in user for a page, or a redirect to the sign-in form."""
    ctx = server.ctx(request)
    if ctx.user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return ctx, RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
    if not server.limiter.allow(f"u:{ctx.user.name}"):
        raise server.refuse(ctx, 429, "too many requests; slow down", action=page)
    return ctx, None


def _user_page(
    server: Server, request: Request, ctx: Ctx, template: str, **values: Any
) -> Response:
    """A signed-in user's page, rendered (and a session for one the proxy signed in)."""
    return _with_proxy_session(server, ctx, _render(server, request, template, ctx, **values))


def _with_proxy_session(server: Server, ctx: Ctx, response: Response) -> Response:
    """Users signed in by the auth proxy get a session too: it carries their CSRF token."""
    if ctx.via == "proxy" and ctx.user is not None and ctx.csrf is None:
        sid, csrf = server.auth.create_session(
            ctx.user.name, server.config.server.session_hours, via="proxy"
        )
        server.record(
            ctx,
            "login",
            action="login",
            decision="allow",
            reason="signed in by the trusted auth proxy",
        )
        _set_session_cookie(server, response, sid)
        ctx.csrf = csrf
    return response


def _set_session_cookie(server: Server, response: Response, sid: str) -> None:
    response.set_cookie(
        server.cookie_name,
        sid,
        max_age=int(server.config.server.session_hours * 3600),
        path="/",
        secure=server.config.server.secure_cookies,
        httponly=True,
        samesite="strict",
    )


# ---------------------------------------------------------------------- sign-in


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    server = server_of(request)
    ctx = server.ctx(request)
    if ctx.user is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(server, request, _safe_next(next))


def _login_page(
    server: Server,
    request: Request,
    target: str,
    error: str | None = None,
    status: int = 200,
    name: str = "",
) -> Response:
    pre = secrets.token_urlsafe(24)
    response = _render(
        server,
        request,
        "login.html",
        None,
        status,
        next=target,
        error=error,
        pre=pre,
        name=name,
        page="login",
    )
    response.set_cookie(
        PRE_COOKIE,
        pre,
        max_age=3600,
        path="/login",
        secure=server.config.server.secure_cookies,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/login")
async def login(
    request: Request,
    user: str = Form("", max_length=64),
    password: str = Form("", max_length=1024),
    csrf: str = Form("", max_length=100),
    next: str = Form("/", max_length=2048),
) -> Response:
    server = server_of(request)
    ctx = server.ctx(request)
    target = _safe_next(next)
    name = user.strip()
    anon = Ctx(None, "none", ctx.client, ctx.user_agent)
    if server.failures.exhausted(ctx.client):
        # Past the address's budget of failures: no password check, no record now (the
        # interval's summary record counts it).
        server.failures.note(ctx.client)
        server.metrics.logins[(("result", "address_limited"),)] += 1
        left = int(server.failures.wait(ctx.client)) + 1
        return _login_page(
            server,
            request,
            target,
            f"Too many failed requests from your address. Try again in {left} seconds.",
            429,
            name,
        )

    def refused(result: str, reason: str, message: str, status: int) -> Response:
        """A refused sign-in: counted against the address, audited, the form again."""
        server.failures.note(ctx.client)
        server.record(
            anon,
            "login_failed",
            action="login",
            params={"name": name},
            decision="deny",
            reason=reason,
        )
        server.metrics.logins[(("result", result),)] += 1
        return _login_page(server, request, target, message, status, name)

    if not csrf_ok(request.cookies.get(PRE_COOKIE), csrf) or not same_origin(request):
        return refused(
            "csrf",
            "CSRF check failed on the sign-in form",
            "The form expired; please try again.",
            403,
        )
    wait = server.throttle.blocked(name, ctx.client)
    if wait > 0:
        return refused(
            "throttled",
            f"throttled: too many failed sign-ins ({wait:.0f} s left)",
            f"Too many failed sign-ins. Try again in {int(wait // 60) + 1} minutes.",
            429,
        )
    found = await run_in_threadpool(_check_password, server, name, password)
    if found is None:
        server.throttle.failed(name, ctx.client)
        return refused("failed", "wrong user name or password", "Wrong user name or password.", 401)
    server.throttle.succeeded(name, ctx.client)
    signed = Ctx(found, "session", ctx.client, ctx.user_agent)
    # The record comes first: if it cannot be written, nobody is signed in (503).
    server.record(signed, "login", action="login", decision="allow", reason="password")
    sid, _csrf = server.auth.create_session(found.name, server.config.server.session_hours)
    server.metrics.logins[(("result", "ok"),)] += 1
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(server, response, sid)
    response.delete_cookie(PRE_COOKIE, path="/login")
    return response


def _check_password(server: Server, name: str, password: str) -> Any:
    with _HASHING:
        return server.auth.check_password(name, password)


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("", max_length=100)) -> Response:
    server = server_of(request)
    ctx = server.ctx(request)
    if ctx.user is None:
        return RedirectResponse("/login", status_code=303)
    if not csrf_ok(ctx.csrf, csrf or request.headers.get("x-csrf-token")) or not same_origin(
        request
    ):
        raise server.refuse(ctx, 403, "CSRF token missing or wrong", action="logout")
    server.record(ctx, "logout", action="logout", decision="allow", reason="signed out")
    if ctx.session_id:
        server.auth.end_session(ctx.session_id)
        server.hub.recheck.kick()  # the session's live follows end now, not in 5 s
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        server.cookie_name,
        path="/",
        secure=server.config.server.secure_cookies,
        httponly=True,
        samesite="strict",
    )
    return response


# ---------------------------------------------------------------------- pages


@router.get("/")
async def home(request: Request) -> Response:
    server = server_of(request)
    ctx, redirect = _page_ctx(server, request, "home")
    if redirect:
        return redirect
    return _user_page(server, request, ctx, "hosts.html", page="hosts")


@router.get("/view")
async def view(
    request: Request,
    host: str = "",
    path: str | None = None,
    unit: str | None = None,
    container: str | None = None,
) -> Response:
    """The log viewer. A deep link: the grant is checked here, then again by every API call."""
    server = server_of(request)
    ctx, redirect = _page_ctx(server, request, "view")
    if redirect:
        return redirect
    assert ctx.access is not None
    src_text = path or unit or container
    hc = granted_host(server, ctx, host, "view", source=src_text)
    try:
        src = source_from(path=path, unit=unit, container=container)
    except BadSource as exc:
        raise server.refuse(ctx, 422, str(exc), action="view", host=host, source=src_text) from None
    caps = ctx.access.source_caps(hc, src) & READ_CAPS
    if not caps:
        raise server.refuse(
            ctx,
            403,
            ctx.access.check(hc, src, "tail").reason,
            action="view",
            host=host,
            source=src.key,
        )
    return _user_page(
        server,
        request,
        ctx,
        "view.html",
        page="view",
        host=hc,
        source=src,
        source_caps=sorted(caps),
    )


@router.get("/merged")
async def merged_page(request: Request) -> Response:
    """The merged view: its sources come from the link (`src=HOST:SOURCE`, repeated) or
    the chooser; every API call it makes checks each of them."""
    server = server_of(request)
    ctx, redirect = _page_ctx(server, request, "merged")
    if redirect:
        return redirect
    assert ctx.access is not None
    if not ctx.access.hosts():
        raise server.refuse(ctx, 403, "no role grants you any host", action="merged")
    return _user_page(server, request, ctx, "merged.html", page="merged", max_sources=MAX_SOURCES)


@router.get("/search")
async def search_page(request: Request) -> Response:
    server = server_of(request)
    ctx, redirect = _page_ctx(server, request, "search")
    if redirect:
        return redirect
    assert ctx.access is not None
    hosts = [h for h in ctx.access.hosts() if SEARCH in ctx.access.host_caps(h)]
    if not hosts:
        raise server.refuse(ctx, 403, "no role grants you search on any host", action="search")
    labels = sorted({label for h in hosts for label in h.labels})
    return _user_page(
        server, request, ctx, "search.html", page="search", hosts=hosts, labels=labels
    )


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    server = server_of(request)
    ctx, redirect = _page_ctx(server, request, "audit")
    if redirect:
        return redirect
    assert ctx.access is not None
    if not ctx.access.can_audit():
        raise server.refuse(
            ctx, 403, "the audit trail is for roles with the audit capability", action="audit_page"
        )
    return _user_page(server, request, ctx, "audit.html", page="audit")


# ---------------------------------------------------------------------- operations


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 when the audit trail is writable-looking and readable; 503 otherwise."""
    server = server_of(request)
    try:
        server.audit.check()  # deleted, renamed, replaced, read-only: 503 (and recovery)
        head = server.audit.head()
    except Exception as exc:  # the cause (a path) is for the server log, not the client
        log.error("/healthz: audit store unusable: %s", exc)
        return PlainTextResponse("audit store unavailable\n", status_code=503)
    if server.audit.write_failures and server.metrics.audit_failures:
        status = "degraded: audit writes have failed since start"
    else:
        status = "ok"
    return PlainTextResponse(f"{status}\naudit head {head or 'none'}\n")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text. From loopback, a trusted proxy, or with an auditor's token only:
    host names and request counts are not for everyone."""
    server = server_of(request)
    peer = request.client.host if request.client else ""
    if not (peer in ("127.0.0.1", "::1") or server.proxies.trusts(peer)):
        ctx = server.ctx(request)
        if ctx.access is None or not ctx.access.can_audit():
            raise ApiError(403, "metrics are served to loopback, trusted proxies and auditors")
    a = server.audit
    text = server.metrics.render(
        {
            "logtorukun_audit_write_failures_total": (
                "Audit records that could not be written (each refused a request).",
                float(a.write_failures),
            ),
            "logtorukun_audit_sink_failures_total": (
                "SIEM copies that failed.",
                float(a.sink_failures),
            ),
        }
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
