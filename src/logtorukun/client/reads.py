"""The typed async API the web server and the CLI call: one method per kind of read.

Each method builds a typed request (gate/vocabulary.py) and sends its checked command
line (command_line.py). `via` is the web side's account of who asked (`{"user": ...,
"audit": ...}`); the bridge hands it to the gate, which puts it in its own audit record
next to the SSH identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..gate.vocabulary import (
    DEFAULT_LINES,
    Docker,
    Grep,
    Head,
    Journal,
    Range,
    Request,
    Tail,
)
from .command_line import check_via, line_for
from .errors import ConnectionLost, RequestTimeout
from .pool import Pool, PoolOptions
from .replies import Reply, SourceList
from .settings import Fleet, HostConfig
from .stream import Stream


class Client:
    """Typed reads from the configured workers; one per process, `async with` it.

    `oneshot=True` runs each request as its own SSH channel and gate process instead of
    through the bridge (slower; for gates without a bridge, and for comparison).
    """

    def __init__(
        self,
        hosts: Fleet | Sequence[HostConfig],
        *,
        oneshot: bool = False,
        options: PoolOptions | None = None,
        identity: str | None = None,
    ) -> None:
        """`identity`: with `[ssh] certificates` in `hosts` (a Config) and no `options`,
        the key id of every connection's certificate (the CLI's `--as`)."""
        self.pool = Pool(hosts, options, identity=identity)
        self.oneshot = oneshot

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.pool.close()

    # ---------------------------------------------------------------- generic

    async def stream(
        self,
        host: str,
        command: str,
        *,
        via: dict[str, Any] | None = None,
        positions: bool = False,
    ) -> Stream:
        """Start any gate command; read it as it comes. Close the stream to cancel it.
        `positions` (a follow, over the bridge): `read_item` also yields `Position`s."""
        return await self.pool.start(
            host, command, check_via(via), oneshot=self.oneshot, positions=positions
        )

    async def start(
        self,
        host: str,
        request: Request,
        *,
        via: dict[str, Any] | None = None,
        positions: bool = False,
    ) -> Stream:
        """Start a typed request (gate/vocabulary.py): the web server's way in."""
        return await self.stream(host, line_for(request), via=via, positions=positions)

    async def run(
        self,
        host: str,
        command: str,
        *,
        via: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Run a command to its end (bounded by the gate's caps and `request_timeout`)."""
        limit = self.pool.get(host).host.request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                try:
                    return await self._run_once(host, command, via)
                except ConnectionLost as exc:
                    # A connection that died while idle is only found out by using it
                    # (worker restarted, NAT timeout). Nothing came back, and a read is
                    # safe to repeat: try once more on a fresh connection.
                    if not exc.nothing_received:
                        raise
                    return await self._run_once(host, command, via)
        except TimeoutError:
            raise RequestTimeout(
                host, f"{command[:80]!r} took longer than {limit:g} s (request_timeout)"
            ) from None

    async def _run_once(self, host: str, command: str, via: dict[str, Any] | None) -> Reply:
        stream = await self.stream(host, command, via=via)
        try:
            data = await stream.read_all()
        except ConnectionLost as exc:
            exc.nothing_received = stream.received == 0
            raise
        finally:
            await stream.aclose()
        assert stream.status is not None
        return Reply(host, command, data, stream.status)

    # ---------------------------------------------------------------- typed reads

    async def sources(self, host: str, *, via: dict[str, Any] | None = None) -> SourceList:
        return SourceList.from_reply(await self.run(host, "sources", via=via))

    async def tail(
        self, host: str, path: str, lines: int = DEFAULT_LINES, *, via: dict[str, Any] | None = None
    ) -> Reply:
        return await self.run(host, line_for(Tail(path, lines)), via=via)

    async def head(
        self, host: str, path: str, lines: int | None = None, *, via: dict[str, Any] | None = None
    ) -> Reply:
        return await self.run(host, line_for(Head(path, lines)), via=via)

    async def grep(
        self,
        host: str,
        path: str,
        pattern: str,
        *,
        regex: bool = False,
        ignore_case: bool = False,
        invert: bool = False,
        count: bool = False,
        max_count: int | None = None,
        last: int | None = None,
        via: dict[str, Any] | None = None,
    ) -> Reply:
        """`last`: only the last N matching lines (`| tail -n N`)."""
        request = Grep(path, pattern, regex, ignore_case, invert, count, max_count, tail=last)
        return await self.run(host, line_for(request), via=via)

    async def range(
        self,
        host: str,
        path: str,
        since: str,
        until: str | None = None,
        *,
        max_lines: int | None = None,
        via: dict[str, Any] | None = None,
    ) -> Reply:
        return await self.run(host, line_for(Range(path, since, until, max_lines)), via=via)

    async def journal(
        self,
        host: str,
        unit: str,
        *,
        lines: int | None = None,
        since: str | None = None,
        until: str | None = None,
        grep: str | None = None,
        priority: str | None = None,
        output: str = "short-iso",
        via: dict[str, Any] | None = None,
    ) -> Reply:
        request = Journal(unit, lines, since, until, grep, priority, output)
        return await self.run(host, line_for(request), via=via)

    async def docker_logs(
        self,
        host: str,
        container: str,
        *,
        tail: int | None = None,
        timestamps: bool = False,
        since: str | None = None,
        until: str | None = None,
        via: dict[str, Any] | None = None,
    ) -> Reply:
        request = Docker(container, tail, timestamps, since, until)
        return await self.run(host, line_for(request), via=via)

    async def follow(
        self, host: str, path: str, *, lines: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        """`tail -F`: the last `lines`, then new lines as they are written, across rotation.

        Ends at the gate's follow_max_seconds (status.truncated) or when closed.
        """
        return await self.start(host, Tail(path, lines, follow=True), via=via)

    async def follow_journal(
        self, host: str, unit: str, *, lines: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        return await self.start(host, Journal(unit, lines=lines, follow=True), via=via)

    async def follow_docker(
        self, host: str, container: str, *, tail: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        return await self.start(host, Docker(container, tail=tail, follow=True), via=via)
