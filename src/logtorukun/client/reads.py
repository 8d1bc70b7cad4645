"""The typed async API the web server and the CLI call: one method per kind of read.

Commands are built here from typed values, each quoted with `shlex.quote`, then split
again and compared with what was meant, so no value can change the command's shape (the
gate re-parses and re-checks everything anyway). Values the gate would refuse for sure
(control characters, relative paths) are refused here first with a clearer message.

`via` is the web side's account of who asked (`{"user": ..., "audit": ...}`); the bridge
hands it to the gate, which puts it in its own audit record next to the SSH identity.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..gate.protocol import MAX_REQUEST
from ..gate.vocabulary import (
    DEFAULT_LINES,
    MAX_NUMBER,
    MAX_PATH,
    MAX_PATTERN,
    Docker,
    Exit,
    Grep,
    Head,
    Journal,
    Range,
    Request,
    Tail,
    command_words,
    join_words,
)
from .errors import (
    ConnectionLost,
    InvalidArgument,
    LimitHit,
    ProtocolError,
    RequestTimeout,
)
from .pool import Pool, PoolOptions
from .settings import Fleet, HostConfig
from .stream import Status, Stream

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"[A-Za-z0-9@_.:][A-Za-z0-9@_.:+-]{0,254}")


# ---------------------------------------------------------------------- commands


def quote_command(argv: Sequence[str], pipe_tail: int | None = None) -> str:
    """Join argv for the gate with every word quoted; re-split to prove nothing leaked."""
    return _quote(tuple(argv), pipe_tail)


@functools.lru_cache(maxsize=4096)  # the re-split costs more than the request itself
def _quote(argv: tuple[str, ...], pipe_tail: int | None) -> str:
    for word in argv:
        if not isinstance(word, str):
            raise InvalidArgument("", f"command word {word!r} is not a string")
        if _CONTROL.search(word):
            raise InvalidArgument("", f"control character in {word[:60]!r}: refused")
    command = join_words(list(argv), None if pipe_tail is None else int(pipe_tail))
    expect = list(argv)
    if pipe_tail is not None:
        expect += ["|", "tail", "-n", str(int(pipe_tail))]
    if shlex.split(command) != expect:  # pragma: no cover - shlex.quote guarantees this
        raise InvalidArgument("", f"cannot quote {list(argv)!r} safely")
    return command


def command_for(request: Request) -> str:
    """The gate's command line for a typed request (gate/vocabulary.py), quoted and checked."""
    words, pipe_tail = command_words(request)
    return quote_command(words, pipe_tail)


def _path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument("", f"path must be absolute: {path!r}")
    if len(path) > MAX_PATH:
        raise InvalidArgument("", f"path longer than {MAX_PATH} characters")
    return path


def _count(what: str, n: int | None) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise InvalidArgument("", f"{what} must be a whole number from 0, not {n!r}")
    return n


def _text(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument("", f"{what} must be a non-empty string")
    if len(value) > MAX_PATTERN:
        raise InvalidArgument("", f"{what} longer than {MAX_PATTERN} characters")
    return value


def _name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgument("", f"{what} {value!r} is not a plain name")
    return value


def _maybe(check: Callable[[str, Any], Any], what: str, value: Any) -> Any:
    return None if value is None else check(what, value)


def tail_command(
    path: str,
    lines: int = DEFAULT_LINES,
    *,
    follow: bool = False,
    start: tuple[int, int] | tuple[int, int, int] | None = None,
    before: tuple[int, int] | None = None,
) -> str:
    """`start` (inode, offset[, tag]): a follow that continues where an earlier read
    ended (`Status.pos`, `Position.start`). `before` (inode, offset): a page of history,
    the `lines` lines that end there."""
    n = _count("lines", lines)
    at: tuple[int, int, int | None] | None = None
    if start is not None:
        if not follow:
            raise InvalidArgument("", "a start position only goes with a follow")
        if not (
            isinstance(start, tuple)
            and len(start) in (2, 3)
            and all(type(x) is int and 0 <= x < 10**20 for x in start)
            and (len(start) == 2 or start[2] < 2**32)
        ):
            raise InvalidArgument("", f"start must be (inode, offset[, tag]), not {start!r}")
        at = (start[0], start[1], start[2] if len(start) == 3 else None)
    if before is not None and (
        follow or not all(type(x) is int and 0 <= x < 10**20 for x in before)
    ):
        raise InvalidArgument("", f"before must be (inode, offset) of a read, not {before!r}")
    back = None if before is None else (before[0], before[1])
    return command_for(Tail(_path(path), n, bool(follow), at, back))


def head_command(path: str, lines: int | None = None) -> str:
    """`head -n N` or, with no N, `cat` (up to the gate's caps)."""
    n = _maybe(_count, "lines", lines)
    return command_for(Head(_path(path), n))


def grep_command(
    path: str,
    pattern: str,
    *,
    regex: bool = False,
    ignore_case: bool = False,
    invert: bool = False,
    count: bool = False,
    max_count: int | None = None,
    last: int | None = None,
) -> str:
    """`grep -F|-E [...] -e PATTERN PATH [| tail -n LAST]`; -e keeps a `-x` pattern data."""
    m = _maybe(_count, "max_count", max_count)
    pattern = _text("pattern", pattern)
    path = _path(path)
    return command_for(
        Grep(
            path=path,
            pattern=pattern,
            regex=bool(regex),
            ignore_case=bool(ignore_case),
            invert=bool(invert),
            count=bool(count),
            max_count=m,
            tail=_maybe(_count, "last", last),
        )
    )


def range_command(
    path: str, since: str, until: str | None = None, *, max_lines: int | None = None
) -> str:
    since = _text("since", since)
    until = _maybe(_text, "until", until)
    m = _maybe(_count, "max_lines", max_lines)
    return command_for(Range(_path(path), since, until, m))


def journal_command(
    unit: str,
    *,
    lines: int | None = None,
    since: str | None = None,
    until: str | None = None,
    grep: str | None = None,
    priority: str | None = None,
    output: str = "short-iso",
    follow: bool = False,
) -> str:
    return command_for(
        Journal(
            unit=_name("unit", unit),
            lines=_maybe(_count, "lines", lines),
            since=_maybe(_text, "since", since),
            until=_maybe(_text, "until", until),
            grep=_maybe(_text, "grep", grep),
            priority=_maybe(_name, "priority", priority),
            output=_name("output", output),
            follow=bool(follow),
        )
    )


def docker_command(
    container: str,
    *,
    tail: int | None = None,
    timestamps: bool = False,
    since: str | None = None,
    until: str | None = None,
    follow: bool = False,
) -> str:
    n = _maybe(_count, "tail", tail)
    since = _maybe(_text, "since", since)
    until = _maybe(_text, "until", until)
    name = _name("container", container)
    return command_for(Docker(name, n, bool(timestamps), since, until, bool(follow)))


def line_for(request: Request) -> str:
    """The gate's command line for a typed request (gate/vocabulary.py), through the
    same checks as the builders above; InvalidArgument names what is wrong."""
    r = request
    if isinstance(r, Tail):
        start: tuple[int, int] | tuple[int, int, int] | None = None
        if r.start is not None:
            ino, off, tag = r.start
            start = (ino, off) if tag is None else (ino, off, tag)
        return tail_command(r.path, r.lines, follow=r.follow, start=start, before=r.before)
    if isinstance(r, Head):
        return head_command(r.path, r.lines)
    if isinstance(r, Grep) and not (r.line_numbers or r.word):
        return grep_command(
            r.path,
            r.pattern,
            regex=r.regex,
            ignore_case=r.ignore_case,
            invert=r.invert,
            count=r.count,
            max_count=r.max_count,
            last=r.tail,
        )
    if isinstance(r, Range):
        return range_command(r.path, r.since, r.until, max_lines=r.max_lines)
    if isinstance(r, Journal):
        return journal_command(
            r.unit,
            lines=r.lines,
            since=r.since,
            until=r.until,
            grep=r.grep,
            priority=r.priority,
            output=r.output,
            follow=r.follow,
        )
    if isinstance(r, Docker):
        return docker_command(
            r.container,
            tail=r.tail,
            timestamps=r.timestamps,
            since=r.since,
            until=r.until,
            follow=r.follow,
        )
    return command_for(r)  # sources, help, and grep's -n/-w: words the gate checks


def check_via(via: dict[str, Any] | None) -> dict[str, Any] | None:
    """`via` must be a small JSON object: it lands in the worker's audit record."""
    if via is None:
        return None
    if not isinstance(via, dict) or not all(isinstance(k, str) for k in via):
        raise InvalidArgument("", "via must be a dict with string keys")
    try:
        size = len(json.dumps(via, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("", f"via is not JSON: {exc}") from None
    if size > MAX_REQUEST // 2:
        raise InvalidArgument("", f"via is {size} bytes of JSON; keep it under {MAX_REQUEST // 2}")
    return via


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Reply:
    """A finished request: all its output and how it ended."""

    host: str
    command: str
    data: bytes
    status: Status

    @property
    def text(self) -> str:
        """The output as text; bytes that are not UTF-8 become U+FFFD."""
        return self.data.decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        """A limit cut the output short; `status.reason` says which."""
        return self.status.truncated or self.status.exit == Exit.LIMIT

    def limit_error(self) -> LimitHit | None:
        """The truncation as an error, for callers that must not show partial data."""
        if not self.truncated:
            return None
        return LimitHit(self.host, Exit.LIMIT, self.status.reason or "output truncated", self.data)


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    mtime: int
    compressed: bool = False


@dataclass(frozen=True)
class SourceList:
    """What this worker's policy lets us read."""

    host: str
    gate: str
    files: tuple[SourceFile, ...]
    units: tuple[str, ...]
    containers: tuple[str, ...]
    limits: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- client


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
        reply = await self.run(host, "sources", via=via)
        try:
            doc = json.loads(reply.data)
            files = tuple(
                SourceFile(
                    str(f["path"]),
                    int(f["size"]),
                    int(f["mtime"]),
                    bool(f.get("compressed", False)),
                )
                for f in doc.get("files", [])
            )
            return SourceList(
                host=host,
                gate=str(doc.get("gate", "")),
                files=files,
                units=tuple(str(u) for u in doc.get("units", [])),
                containers=tuple(str(c) for c in doc.get("containers", [])),
                limits=dict(doc.get("limits", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(
                host, f"sources: the gate's answer is not the expected JSON ({exc})"
            ) from None

    async def tail(
        self, host: str, path: str, lines: int = DEFAULT_LINES, *, via: dict[str, Any] | None = None
    ) -> Reply:
        return await self.run(host, tail_command(path, lines), via=via)

    async def head(
        self, host: str, path: str, lines: int | None = None, *, via: dict[str, Any] | None = None
    ) -> Reply:
        return await self.run(host, head_command(path, lines), via=via)

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
        command = grep_command(
            path,
            pattern,
            regex=regex,
            ignore_case=ignore_case,
            invert=invert,
            count=count,
            max_count=max_count,
            last=last,
        )
        return await self.run(host, command, via=via)

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
        return await self.run(host, range_command(path, since, until, max_lines=max_lines), via=via)

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
        command = journal_command(
            unit, lines=lines, since=since, until=until, grep=grep, priority=priority, output=output
        )
        return await self.run(host, command, via=via)

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
        command = docker_command(
            container, tail=tail, timestamps=timestamps, since=since, until=until
        )
        return await self.run(host, command, via=via)

    async def follow(
        self, host: str, path: str, *, lines: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        """`tail -F`: the last `lines`, then new lines as they are written, across rotation.

        Ends at the gate's follow_max_seconds (status.truncated) or when closed.
        """
        return await self.stream(host, tail_command(path, lines, follow=True), via=via)

    async def follow_journal(
        self, host: str, unit: str, *, lines: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        return await self.stream(host, journal_command(unit, lines=lines, follow=True), via=via)

    async def follow_docker(
        self, host: str, container: str, *, tail: int = 10, via: dict[str, Any] | None = None
    ) -> Stream:
        return await self.stream(host, docker_command(container, tail=tail, follow=True), via=via)
