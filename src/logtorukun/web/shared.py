"""The per-user and per-address limits kept in PostgreSQL (`[server] database` is a
`postgresql://` URL), so that several instances count together: the request rate limit,
the sign-in throttle and the per-user follow cap.

Each is the same algorithm as its in-memory twin in `web/security.py` and `web/sse.py`
(token bucket, sliding window of failures, a count of open follows), with its state in a
table and the database's clock, so which instance a request reaches does not matter.
Each check is one short statement; when the database does not answer, they raise
`PgError` like the stores, and the request is refused (503), never let through.

Follows: each open follow is a row with its instance's id; every instance refreshes its
rows every `HEARTBEAT` seconds, and rows not refreshed for `STALE` seconds (an instance
killed with its follows open) no longer count.
"""

from __future__ import annotations

import secrets
import threading
import time

from ..db.postgres import FOLLOW_LOCK, Database
from .security import LoginThrottle, RateLimiter

HEARTBEAT = 10.0
STALE = 3 * HEARTBEAT


class SharedRateLimiter(RateLimiter):
    """`RateLimiter` (token bucket per key) with its buckets in `limit_buckets`."""

    def __init__(self, url: str, per_minute: int, burst: int | None = None) -> None:
        super().__init__(per_minute, burst)
        self.db = Database.get(url).connect()
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        sql = "SELECT limit_take(?, ?, ?)"
        args = (key, self.burst, self.rate)
        with self._lock:
            row = self.db.execute(sql, args).fetchone()
        return bool(row and row[0])


class SharedLoginThrottle(LoginThrottle):
    """`LoginThrottle` (failures in a sliding window, per pair, address and user) with
    the failures in `login_failures`."""

    def __init__(
        self,
        url: str,
        per_pair: int = 5,
        per_ip: int = 20,
        per_user: int = 100,
        window: float = 900.0,
    ) -> None:
        super().__init__(per_pair, per_ip, per_user, window)
        self.db = Database.get(url).connect()
        self._lock = threading.Lock()
        self._writes = 0

    def _keys(self, user: str, ip: str) -> tuple[tuple[str, int], ...]:
        # PostgreSQL text holds no NUL; a space cannot occur in a user name or address.
        return tuple((key.replace("\0", " "), n) for key, n in super()._keys(user, ip))

    def blocked(self, user: str, ip: str) -> float:
        """Seconds to wait, or 0 if an attempt may be made now."""
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(user, ip):
                row = self.db.execute(
                    "SELECT at + ? - ltk_now() FROM login_failures"
                    " WHERE key = ? AND at > ltk_now() - ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                    (self.window, key, self.window, limit - 1),
                ).fetchone()
                if row is not None:
                    wait = max(wait, float(row[0]))
        return wait

    def failed(self, user: str, ip: str) -> None:
        with self._lock:
            for key, _ in self._keys(user, ip):
                self.db.execute(
                    "INSERT INTO login_failures (key, at) VALUES (?, ltk_now())",
                    (key,),
                )
            self._writes += 1
            if self._writes % 100 == 0:  # a spray of names must not grow the table for ever
                self.db.execute(
                    "DELETE FROM login_failures WHERE at < ltk_now() - ?",
                    (self.window,),
                )

    def succeeded(self, user: str, ip: str) -> None:
        with self._lock:
            self.db.execute(
                "DELETE FROM login_failures WHERE key = ?", (self._keys(user, ip)[0][0],)
            )


class SharedFollows:
    """Open follows of all instances, per user, for the per-user cap."""

    def __init__(self, url: str) -> None:
        self.db = Database.get(url).connect(FOLLOW_LOCK)
        self.instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._last_beat = 0.0

    def take(self, user: str, cap: int) -> str | None:
        """A slot id if `user` has fewer than `cap` open follows everywhere, else None."""
        slot = secrets.token_hex(8)
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")  # one taker at a time (FOLLOW_LOCK): a true count
            try:
                row = self.db.execute(
                    'SELECT count(*) FROM follow_slots WHERE "user" = ? AND beat > ltk_now() - ?',
                    (user, STALE),
                ).fetchone()
                if row is not None and int(row[0]) >= cap:
                    self.db.execute("ROLLBACK")
                    return None
                self.db.execute(
                    'INSERT INTO follow_slots (id, "user", instance, beat)'
                    " VALUES (?, ?, ?, ltk_now())",
                    (slot, user, self.instance),
                )
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return slot

    def release(self, slot: str) -> None:
        with self._lock:
            self.db.execute("DELETE FROM follow_slots WHERE id = ?", (slot,))

    def heartbeat(self) -> None:
        """Keep this instance's open follows counted; forget other instances' stale ones."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT:
            return
        self._last_beat = now
        with self._lock:
            self.db.execute(
                "UPDATE follow_slots SET beat = ltk_now() WHERE instance = ?",
                (self.instance,),
            )
            self.db.execute(
                "DELETE FROM follow_slots WHERE beat < ltk_now() - ?",
                (STALE * 10,),
            )
