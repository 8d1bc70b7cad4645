"""The per-user and per-address limits kept in PostgreSQL, so that several instances count
together: the request rate limit, the sign-in throttle and the per-user follow cap.

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

from .postgres import Database

HEARTBEAT = 10.0
STALE = 3 * HEARTBEAT
_NOW = "extract(epoch from clock_timestamp())"


class SharedRateLimiter:
    """`RateLimiter` (token bucket per key) with its buckets in `limit_buckets`."""

    def __init__(self, url: str, per_minute: int, burst: int | None = None) -> None:
        self.db = Database.get(url).connect()
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(per_minute // 4, 10))
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        refill = f"LEAST(?, b.tokens + ({_NOW} - b.last) * ?)"
        sql = (
            "INSERT INTO limit_buckets AS b (key, tokens, last, allowed)"
            f" VALUES (?, ? - 1, {_NOW}, true)"
            " ON CONFLICT (key) DO UPDATE SET"
            f" allowed = {refill} >= 1,"
            f" tokens = CASE WHEN {refill} >= 1 THEN {refill} - 1 ELSE {refill} END,"
            f" last = {_NOW}"
            " RETURNING allowed"
        )
        args = (key, self.burst, *(self.burst, self.rate) * 4)
        with self._lock:
            row = self.db.execute(sql, args).fetchone()
        return bool(row and row[0])


class SharedLoginThrottle:
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
        self.db = Database.get(url).connect()
        self.per_pair, self.per_ip, self.per_user = per_pair, per_ip, per_user
        self.window = window
        self._lock = threading.Lock()
        self._writes = 0

    def _keys(self, user: str, ip: str) -> tuple[tuple[str, int], ...]:
        name = user.lower()
        return (
            (f"p:{name}\0{ip}", self.per_pair),
            (f"i:{ip}", self.per_ip),
            (f"u:{name}", self.per_user),
        )

    def blocked(self, user: str, ip: str) -> float:
        """Seconds to wait, or 0 if an attempt may be made now."""
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(user, ip):
                row = self.db.execute(
                    f"SELECT at + ? - {_NOW} FROM login_failures"
                    f" WHERE key = ? AND at > {_NOW} - ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                    (self.window, key, self.window, limit - 1),
                ).fetchone()
                if row is not None:
                    wait = max(wait, float(row[0]))
        return wait

    def failed(self, user: str, ip: str) -> None:
        with self._lock:
            for key, _ in self._keys(user, ip):
                self.db.execute(
                    f"INSERT INTO login_failures (key, at) VALUES (?, {_NOW})", (key,)
                )
            self._writes += 1
            if self._writes % 100 == 0:  # a spray of names must not grow the table for ever
                self.db.execute(
                    f"DELETE FROM login_failures WHERE at < {_NOW} - ?", (self.window,)
                )

    def succeeded(self, user: str, ip: str) -> None:
        with self._lock:
            self.db.execute(
                "DELETE FROM login_failures WHERE key = ?", (f"p:{user.lower()}\0{ip}",)
            )


class SharedFollows:
    """Open follows of all instances, per user, for the per-user cap."""

    def __init__(self, url: str) -> None:
        self.db = Database.get(url).connect()
        self.instance = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._last_beat = 0.0

    def take(self, user: str, cap: int) -> str | None:
        """A slot id if `user` has fewer than `cap` open follows everywhere, else None."""
        slot = secrets.token_hex(8)
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")  # one taker at a time: the count stays true
            try:
                row = self.db.execute(
                    f'SELECT count(*) FROM follow_slots WHERE "user" = ? AND beat > {_NOW} - ?',
                    (user, STALE),
                ).fetchone()
                if row is not None and int(row[0]) >= cap:
                    self.db.execute("ROLLBACK")
                    return None
                self.db.execute(
                    f'INSERT INTO follow_slots (id, "user", instance, beat) VALUES (?, ?, ?, {_NOW})',
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
                f"UPDATE follow_slots SET beat = {_NOW} WHERE instance = ?", (self.instance,)
            )
            self.db.execute(f"DELETE FROM follow_slots WHERE beat < {_NOW} - ?", (STALE * 10,))
