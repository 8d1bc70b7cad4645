"""Long-lived streams re-check the credentials they started with.

Why: a request is authorised once, when it starts; a live follow can last an hour.
Signing out, revoking a token, removing or disabling a user, or changing their roles so
the grant is gone must end the follows they have open, not only their next request.
Every `[server] follow_recheck_seconds` (default 5) each open follow's credential is
looked up again (in a thread: one SQLite read per distinct session or token), and the
grant is checked against the user's current roles; a follow that fails ends with an
`end` event ("your session ended — sign in again") and a `follow_end` record whose
reason says why. Signing out through the web also triggers a re-check at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..config import HostConfig
from .access import FOLLOW, Access, Source
from .auth import User

if TYPE_CHECKING:
    from .context import Ctx, Server

log = logging.getLogger("logtorukun.web")


class Revocable(Protocol):
    def revoke(self, reason: str, shown: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """What a stream was authorised with: a session id, a token id or a proxy user."""

    kind: str  # "session" | "token" | "proxy"
    key: str
    user: str
    host: HostConfig
    source: Source

    @classmethod
    def of(cls, ctx: Ctx, host: HostConfig, source: Source) -> Credential:
        assert ctx.user is not None
        if ctx.via.startswith("token:"):
            return cls("token", ctx.via[6:], ctx.user.name, host, source)
        if ctx.via == "proxy":
            return cls("proxy", ctx.user.name, ctx.user.name, host, source)
        return cls("session", ctx.session_id or "", ctx.user.name, host, source)


def _who(server: Server, cred: Credential) -> tuple[User | None, str]:
    """The credential's user now, or None and why it no longer works."""
    auth = server.auth
    if cred.kind == "token":
        return auth.token_state(cred.key)
    if cred.kind == "session":
        sess = auth.session(cred.key)
        if sess is not None:
            return sess.user, ""
    user = auth.get_user(cred.user)
    if user is None:
        return None, "user removed"
    if user.disabled:
        return None, "user disabled"
    if cred.kind == "session":
        return None, "signed out, or the session expired"
    return user, ""


def check(server: Server, creds: list[Credential]) -> dict[Credential, tuple[str, str]]:
    """(audit reason, text shown) for every credential that no longer allows its follow."""
    users: dict[tuple[str, str], tuple[User | None, str]] = {}
    failed: dict[Credential, tuple[str, str]] = {}
    for cred in creds:
        who = users.get((cred.kind, cred.key))
        if who is None:
            who = users[(cred.kind, cred.key)] = _who(server, cred)
        user, why = who
        if user is None:
            failed[cred] = (
                f"credentials re-checked: {why}",
                f"your session ended — sign in again ({why})",
            )
            continue
        decision = Access(server.config, user.roles).check(cred.host, cred.source, FOLLOW)
        if not decision.allowed:
            failed[cred] = (
                f"credentials re-checked: grant removed ({decision.reason})",
                "your access to this log ended (your roles changed)",
            )
    return failed


class Rechecker:
    """The open streams and their credentials; one task re-checks them all."""

    def __init__(self, server: Server, every: float) -> None:
        self.server = server
        self.every = every
        self.streams: dict[Revocable, Credential] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: Revocable, cred: Credential) -> None:
        self.streams[stream] = cred
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def remove(self, stream: Revocable) -> None:
        self.streams.pop(stream, None)

    def kick(self) -> None:
        """Re-check now (after a sign-out through the web)."""
        self._kick.set()

    async def _run(self) -> None:
        while self.streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=self.every)
            self._kick.clear()
            snapshot = dict(self.streams)
            try:
                failed = await asyncio.to_thread(check, self.server, list(set(snapshot.values())))
            except Exception:  # the user database is unreadable: keep serving, say so
                log.exception("follow credential re-check failed")
                continue
            for stream, cred in snapshot.items():
                if cred in failed and stream in self.streams:
                    self.streams.pop(stream)
                    stream.revoke(*failed[cred])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
