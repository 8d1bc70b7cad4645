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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, HostConfig
from ..gate.protocol import MAX_REQUEST
from .errors import (
    EXIT_LIMIT,
    ConnectionLost,
    InvalidArgument,
    LimitHit,
    ProtocolError,
    RequestTimeout,
)
from .pool import Pool, PoolOptions
from .stream import Status, Stream

MAX_VALUE = 1024
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
    command = " ".join(shlex.quote(w) for w in argv)
    expect = list(argv)
    if pipe_tail is not None:
        command += f" | tail -n {int(pipe_tail)}"
        expect += ["|", "tail", "-n", str(int(pipe_tail))]
    if shlex.split(command) != expect:  # pragma: no cover - shlex.quote guarantees this
        raise InvalidArgument("", f"cannot quote {list(argv)!r} safely")
    return command


def _path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument("", f"path must be absolute: {path!r}")
    if len(path) > MAX_VALUE:
        raise InvalidArgument("", f"path longer than {MAX_VALUE} characters")
    return path


def _count(what: str, n: int | None) -> str:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 999_999_999:
        raise InvalidArgument("", f"{what} must be a whole number from 0, not {n!r}")
    return str(n)


def _text(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument("", f"{what} must be a non-empty string")
    if len(value) > MAX_VALUE:
        raise InvalidArgument("", f"{what} longer than {MAX_VALUE} characters")
    return value


def _name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgument("", f"{what} {value!r} is not a plain name")
    return value


def tail_command(
    path: str,
    lines: int = 200,
    *,
    follow: bool = False,
    start: tuple[int, int] | tuple[int, int, int] | None = None,
    before: tuple[int, int] | None = None,
) -> str:
    """`start` (inode, offset[, tag]): a follow that continues where an earlier read
    ended (`Status.pos`, `Position.start`). `before` (inode, offset): a page of history,
    the `lines` lines that end there."""
    argv = ["tail", "-F"] if follow else ["tail"]
    argv += ["-n", _count("lines", lines)]
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
        argv += ["--from", ":".join(map(str, start))]
    if before is not None:
        if follow or not all(type(x) is int and 0 <= x < 10**20 for x in before):
            raise InvalidArgument("", f"before must be (inode, offset) of a read, not {before!r}")
        argv += ["--before", f"{before[0]}:{before[1]}"]
    return quote_command([*argv, _path(path)])


def head_command(path: str, lines: int | None = None) -> str:
    """`head -n N` or, with no N, `cat` (up to the gate's caps)."""
    if lines is None:
        return quote_command(["cat", _path(path)])
    return quote_command(["head", "-n", _count("lines", lines), _path(path)])


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
    argv = ["grep", "-E" if regex else "-F"]
    for on, flag in ((ignore_case, "-i"), (invert, "-v"), (count, "-c")):
        if on:
            argv.append(flag)
    if max_count is not None:
        argv += ["-m", _count("max_count", max_count)]
    argv += ["-e", _text("pattern", pattern), _path(path)]
    return quote_command(argv, None if last is None else int(_count("last", last)))


def range_command(
    path: str, since: str, until: str | None = None, *, max_lines: int | None = None
) -> str:
    argv = ["range", f"--since={_text('since', since)}"]
    if until is not None:
        argv.append(f"--until={_text('until', until)}")
    if max_lines is not None:
        argv += ["-m", _count("max_lines", max_lines)]
    return quote_command([*argv, _path(path)])


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
    argv = ["journalctl", "-u", _name("unit", unit)]
    if lines is not None:
        argv += ["-n", _count("lines", lines)]
    for opt, value in (("since", since), ("until", until), ("grep", grep)):
        if value is not None:
            argv.append(f"--{opt}={_text(opt, value)}")
    if priority is not None:
        argv += ["-p", _name("priority", priority)]
    argv += ["-o", _name("output", output)]
    if follow:
        argv.append("-f")
    return quote_command(argv)


def docker_command(
    container: str,
    *,
    tail: int | None = None,
    timestamps: bool = False,
    since: str | None = None,
    until: str | None = None,
    follow: bool = False,
) -> str:
    argv = ["docker", "logs"]
    if tail is not None:
        argv += ["--tail", _count("tail", tail)]
    if timestamps:
        argv.append("--timestamps")
    for opt, value in (("since", since), ("until", until)):
        if value is not None:
            argv.append(f"--{opt}={_text(opt, value)}")
    if follow:
        argv.append("--follow")
    return quote_command([*argv, "--", _name("container", container)])


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
        return self.status.truncated or self.status.exit == EXIT_LIMIT

    def limit_error(self) -> LimitHit | None:
        """The truncation as an error, for callers that must not show partial data."""
        if not self.truncated:
            return None
        return LimitHit(self.host, EXIT_LIMIT, self.status.reason or "output truncated", self.data)


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    mtime: int
    compressed: bool = False


@dataclass(frozen=True)
class Sources:
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
        hosts: Config | Sequence[HostConfig],
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

    async def sources(self, host: str, *, via: dict[str, Any] | None = None) -> Sources:
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
            return Sources(
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
        self, host: str, path: str, lines: int = 200, *, via: dict[str, Any] | None = None
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
