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
from typing import Any

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
    """Failed sign-ins in a sliding window, per (user, address), per address, and per user.

    - `per_pair` failures for one name from one address block that pair: guessing from
      one place stays slow, and the real user elsewhere is not affected.
    - `per_ip` failures from one address (any names) block the address: a spray of
      names from one place stays slow.
    - `per_user` failures for one name from all addresses together block the name: a
      guess spread over many addresses stays slow too. Since one address adds at most
      `per_pair` to it, locking a user out takes `per_user / per_pair` addresses
      (20 with the defaults) failing within the window.

    A blocked attempt is not checked at all (a right password does not get through
    meanwhile) and does not count again.
    """

    def __init__(
        self, per_pair: int = 5, per_ip: int = 20, per_user: int = 100, window: float = 900.0
    ) -> None:
        self.per_pair, self.per_ip, self.per_user = per_pair, per_ip, per_user
        self.window = window
        self._fails: dict[str, deque[float]] = {}

    def _keys(self, user: str, ip: str) -> tuple[tuple[str, int], ...]:
        name = user.lower()
        return (
            (f"p:{name}\0{ip}", self.per_pair),
            (f"i:{ip}", self.per_ip),
            (f"u:{name}", self.per_user),
        )

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
        for key, limit in self._keys(user, ip):
            q = self._recent(key, now)
            if len(q) >= limit:
                wait = max(wait, q[-limit] + self.window - now)
        return wait

    def failed(self, user: str, ip: str) -> None:
        now = time.monotonic()
        for key, _ in self._keys(user, ip):
            self._fails.setdefault(key, deque()).append(now)
        if len(self._fails) > 100_000:  # a spray of names must not grow memory forever
            for key in list(self._fails)[:50_000]:
                del self._fails[key]

    def succeeded(self, user: str, ip: str) -> None:
        self._fails.pop(f"p:{user.lower()}\0{ip}", None)


class AddressFailures:
    """Anonymous and failed-authentication requests per client address, per interval.

    The first `recorded` of them from one address in an `interval` are answered and
    audited one by one; the rest get 429 and are only counted, and one summary record
    per address and interval carries the count (`take_summaries`). So a flood of bogus
    tokens adds at most `recorded + 1` records per address and interval, whatever its
    size. Addresses beyond `max_addresses` at once share one bucket ("*").
    """

    def __init__(
        self, recorded: int = 10, interval: float = 60.0, max_addresses: int = 10_000
    ) -> None:
        self.recorded, self.interval, self.max_addresses = recorded, interval, max_addresses
        # address -> [interval start (monotonic), answered, counted only, first, last]
        self._state: dict[str, list[Any]] = {}
        self._ended: list[tuple[str, int, float, float]] = []

    def note(self, address: str) -> bool:
        """One more failure from `address`; True if it is to be answered and recorded."""
        now = time.monotonic()
        key = address
        if key not in self._state and len(self._state) >= self.max_addresses:
            self._roll(now)
            if len(self._state) >= self.max_addresses:
                key = "*"
        st = self._state.get(key)
        if st is not None and now - st[0] >= self.interval:
            self._close(key, st)
            st = None
        if st is None:
            st = self._state[key] = [now, 0, 0, time.time(), time.time()]
        if st[1] < self.recorded:
            st[1] += 1
            return True
        st[2] += 1
        st[4] = time.time()
        return False

    def exhausted(self, address: str) -> bool:
        """True if the next failure from `address` would only be counted."""
        st = self._state.get(address) or (
            self._state.get("*") if len(self._state) >= self.max_addresses else None
        )
        return (
            st is not None and time.monotonic() - st[0] < self.interval and st[1] >= self.recorded
        )

    def wait(self, address: str) -> float:
        """Seconds until `address` gets a fresh interval."""
        st = self._state.get(address) or self._state.get("*")
        return max(0.0, st[0] + self.interval - time.monotonic()) if st else 0.0

    def _close(self, key: str, st: list[Any]) -> None:
        del self._state[key]
        if st[2]:
            self._ended.append((key, st[2], st[3], st[4]))

    def _roll(self, now: float) -> None:
        for key, st in list(self._state.items()):
            if now - st[0] >= self.interval:
                self._close(key, st)

    def take_summaries(self, *, everything: bool = False) -> list[tuple[str, int, float, float]]:
        """(address, count, first, last wall-clock time) of every ended interval with
        unrecorded failures; `everything` ends the open ones too (at shutdown)."""
        self._roll(time.monotonic())
        if everything:
            for key, st in list(self._state.items()):
                self._close(key, st)
        out, self._ended = self._ended, []
        return out


class RateLimiter:
    """Token bucket per signed-in user: `per_minute` sustained. (Anonymous and failed
    requests have their own, stricter budget per address: `AddressFailures`.)"""

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
