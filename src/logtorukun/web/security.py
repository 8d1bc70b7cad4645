"""Browser-facing defences: headers and CSP, CSRF, login throttling, per-user rate limits.

All state is in memory, per process: right for the single `logtorukun serve` the design
has today; several instances behind one proxy would each throttle on their own (the
limits then multiply by the number of instances; the audit trail still sees everything).
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Iterable

from starlette.requests import Request

# No inline script or style anywhere: every script is a file under /static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on
    # our own form posts, and the origin check below could not tell them from forgeries.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
HSTS = "max-age=31536000"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
PRE_COOKIE = "ltk_pre"  # double-submit cookie for the sign-in form (no session yet)


class TrustedProxies:
    """Addresses (or networks) of reverse proxies whose forwarded headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.nets = [ipaddress.ip_network(e, strict=False) for e in entries]

    def trusts(self, addr: str | None) -> bool:
        if not addr or not self.nets:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.nets)

    def client_address(self, request: Request) -> str:
        """The peer, or the proxy's X-Forwarded-For when (and only when) the peer is a proxy.

        Walks X-Forwarded-For from the right and stops at the first address that is not a
        trusted proxy: entries further left were written by the client and can be forged.
        """
        peer = request.client.host if request.client else ""
        if not self.trusts(peer):
            return peer or "unknown"
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer
        return hops[0] if hops else peer


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; no expected token (no session) means refused."""
    if not expected or not given:
        return False
    return secrets.compare_digest(expected.encode(), given.encode())


def same_origin(request: Request) -> bool:
    """A second line behind the token: a browser's request must come from this origin.

    `Sec-Fetch-Site` (sent by current browsers) is checked first; then Origin, then
    Referer. Clients that send none of them (curl, scripts) are judged by the token alone.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    if origin == "null":
        return False
    host = request.headers.get("host", "")
    rest = origin.split("://", 1)[-1]
    return rest.split("/", 1)[0] == host


class LoginThrottle:
    """Failed sign-ins per user name and per client address in a sliding window.

    After `per_user` failures for one name (or `per_ip` from one address) in `window`
    seconds, further attempts are refused until the oldest failure ages out; a correct
    password does not get through meanwhile, so guessing stays slow.
    """

    def __init__(self, per_user: int = 5, per_ip: int = 20, window: float = 900.0) -> None:
        self.per_user, self.per_ip, self.window = per_user, per_ip, window
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def blocked(self, user: str, ip: str) -> float:
        """Seconds to wait, or 0 if an attempt may be made now."""
        now = time.monotonic()
        wait = 0.0
        for key, limit in ((f"u:{user.lower()}", self.per_user), (f"i:{ip}", self.per_ip)):
            q = self._recent(key, now)
            if len(q) >= limit:
                wait = max(wait, q[0] + self.window - now)
        return wait

    def failed(self, user: str, ip: str) -> None:
        now = time.monotonic()
        for key in (f"u:{user.lower()}", f"i:{ip}"):
            self._fails.setdefault(key, deque()).append(now)
        if len(self._fails) > 100_000:  # a spray of names must not grow memory forever
            for key in list(self._fails)[:50_000]:
                del self._fails[key]

    def succeeded(self, user: str) -> None:
        self._fails.pop(f"u:{user.lower()}", None)


class RateLimiter:
    """Token bucket per key (user, or address when signed out): `per_minute` sustained."""

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(per_minute // 4, 10))
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        return True
