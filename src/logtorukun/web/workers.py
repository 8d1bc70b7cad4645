"""The one place the web server talks to workers: a thin adapter over `logtorukun.client`.

Everything above this module speaks `ReadSpec` in and bytes + `Outcome` out, and sees
worker failures only as `WorkerError` carrying the HTTP status the API contract gives
them (404 not found, 403 refused by the gate's policy, 422 bad request, 502 worker
unreachable or broken, 503 worker busy). The client keeps one SSH connection and one
multiplexed bridge session per worker; `via` ({"user", "audit"}) travels with each
request into the worker's own audit record, so both sides name the person and the
web audit seq. Data is pulled chunk by chunk: a slow HTTP client slows the worker down
(bridge credit) instead of growing a buffer here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import times
from ..client import Client, ClientError, PoolOptions
from ..client.errors import (
    AuthRefused,
    GateExitError,
    HostKeyChanged,
    HostKeyUnknown,
    InvalidArgument,
    KeyFileError,
    ProtocolError,
    UnknownHost,
)
from ..client.stream import Position
from ..client.stream import Stream as ClientStream
from ..config import FleetSettings, HostConfig
from ..config_ssh import SshSettings
from ..gate.vocabulary import Docker, Exit, Grep, Head, Journal, Range, Request, Status, Tail
from .access import Source


class WorkerError(Exception):
    """A request to a worker failed; `status` is the HTTP status to answer with.

    `reason` is what the client sees; `detail` (the audit record and the server log
    get it) may name the server's own files (SSH keys, known_hosts), which clients never
    see."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason


# The one mapping from a gate's exit code to the HTTP status of the answer. A bad request
# (a pattern grep cannot compile, a value the grammar refuses) is the caller's mistake:
# 422 with the gate's reason, which names the value. (Exit.LIMIT is no error: the data
# came, cut, and the answer says `truncated`.)
HTTP_STATUS_FOR_EXIT = {
    Exit.BAD_REQUEST: 422,
    Exit.REFUSED: 403,
    Exit.NOT_FOUND: 404,
    Exit.BUSY: 503,
    Exit.CONFIG: 502,
    Exit.AUDIT: 502,
    Exit.FAILED: 502,
}


def _status_for(exc: ClientError) -> int:
    """The HTTP status for a client error: the gate's exit through the table above; the
    client's own refusals are 404 (no such host) or 422; anything else (unreachable,
    host key, auth, protocol, a gate killed) is 502, the worker's fault."""
    if isinstance(exc, GateExitError):
        return HTTP_STATUS_FOR_EXIT.get(exc.gate_exit, 502)
    if isinstance(exc, UnknownHost):
        return 404
    if isinstance(exc, InvalidArgument):
        return 422
    return 502


# Failures of the web server's own SSH set-up: their messages name its key and
# known_hosts files, so the client gets a generic line instead.
_PRIVATE = (KeyFileError, HostKeyUnknown, HostKeyChanged, AuthRefused, ProtocolError)


def _error(exc: ClientError) -> WorkerError:
    reason = (exc.reason if isinstance(exc, GateExitError) else exc.message) or str(exc)
    if isinstance(exc, _PRIVATE):
        public = (
            f"the web server cannot reach {exc.host or 'the worker'} over SSH "
            "(its settings for this host need an administrator; the server log has details)"
        )
        return WorkerError(_status_for(exc), public, reason)
    return WorkerError(_status_for(exc), reason)


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """One bounded read or a follow, in the web's terms; `request()` is the gate's."""

    verb: str  # "tail" | "grep" | "range" | "follow" | "cat"
    source: Source
    lines: int = 200
    pattern: str | None = None
    regex: bool = False
    ignore_case: bool = False
    invert: bool = False
    max: int | None = None
    since: str | None = None
    until: str | None = None
    start: tuple[int, int, int] | None = None  # a file follow continuing at (ino, off, tag)
    before: tuple[int, int] | None = None  # a page of history ending at (ino, off)

    @classmethod
    def grep(
        cls,
        source: Source,
        pattern: str,
        *,
        regex: bool,
        ignore_case: bool,
        invert: bool,
        max: int,
    ) -> ReadSpec:
        """A search of one source: at most `max` matching lines."""
        return cls(
            "grep",
            source,
            max,
            pattern,
            regex=regex,
            ignore_case=ignore_case,
            invert=invert,
            max=max,
        )

    @classmethod
    def last(cls, source: Source, lines: int, since: str | None, until: str | None) -> ReadSpec:
        """The last `lines` lines of a source, or with `since`/`until` (15m, today, a
        date: resolved now, in the form the source kind takes; raises `times.BadTime`)
        the first `lines` of that window, which a file reads by the gate's `range`."""
        kind = source.kind
        since = times.for_source("since", since, kind) if since else None
        until = times.for_source("until", until, kind) if until else None
        verb = "range" if kind == "file" and (since or until) else "tail"
        since = since or ("1970-01-01" if until else None)
        return cls(verb, source, lines=lines, since=since, until=until)

    @staticmethod
    def unsearchable(source: Source, invert: bool) -> str | None:
        """Why the worker cannot search `source` (None: it can)."""
        if source.kind == "container":
            return "the gate cannot search container logs; use tail with since/until"
        if source.kind == "unit" and invert:
            return "invert is not supported for units"
        return None

    @property
    def positions(self) -> bool:
        """A file follow: ask the gate for positions (resume points and heartbeats)."""
        return self.verb == "follow" and self.source.kind == "file"

    def request(self) -> Request:
        """The gate request this read is (gate/vocabulary.py); the client checks its
        values (InvalidArgument) and writes the command line."""
        s = self.source
        if s.kind == "unit":
            if self.verb == "follow":
                return Journal(s.name, lines=0, follow=True)
            grep = None
            if self.verb == "grep" and self.pattern is not None:
                grep = self.pattern if self.regex else _pcre_escape(self.pattern)
                grep = f"(?i){grep}" if self.ignore_case else grep
            n = self.max if self.verb == "grep" and self.max else self.lines
            return Journal(s.name, lines=n, since=self.since, until=self.until, grep=grep)
        if s.kind == "container":
            if self.verb == "follow":
                return Docker(s.name, tail=0, timestamps=True, follow=True)
            return Docker(
                s.name, tail=self.lines, timestamps=True, since=self.since, until=self.until
            )
        if self.verb == "follow":
            return Tail(s.name, 0, follow=True, start=self.start)
        if self.verb == "cat":
            return Head(s.name, None)
        if self.verb == "range":
            return Range(s.name, self.since or "1970-01-01", self.until, max_lines=self.lines)
        if self.verb == "grep":
            return Grep(
                s.name,
                self.pattern or "",
                regex=self.regex,
                ignore_case=self.ignore_case,
                invert=self.invert,
                max_count=self.max,
            )
        return Tail(s.name, self.lines, before=self.before)


def _pcre_escape(text: str) -> str:
    """journalctl -g is always PCRE: escape a fixed string so it matches literally."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


@dataclass(slots=True)
class Outcome:
    """How a worker request ended: the gate's own `Status` (its END, as the client got
    it), or the failure that came instead; and what came through this server."""

    status: Status | None = None
    failed_exit: int | None = None  # a refusal raised before any END: the gate's exit
    failure: str = ""  # ... and its reason, or why the connection failed
    bytes: int = 0
    lines: int = 0
    started: float = field(default_factory=time.monotonic)
    cert_serial: int | None = None  # [ssh] certificates: joins the worker's audit record

    @property
    def exit(self) -> int | None:
        return self.status.exit if self.status is not None else self.failed_exit

    @property
    def reason(self) -> str:
        return self.status.reason if self.status is not None else self.failure

    @property
    def truncated(self) -> bool:
        s = self.status
        return s is not None and (s.truncated or s.exit != Exit.OK)

    @property
    def pos(self) -> tuple[int, int, int] | None:
        """A file tail: where a follow continues."""
        return self.status.pos if self.status is not None else None

    def as_audit(self) -> dict[str, Any]:
        return {
            **({"cert_serial": self.cert_serial} if self.cert_serial is not None else {}),
            "exit": self.exit,
            "bytes": self.bytes,
            "lines": self.lines,
            "truncated": self.truncated,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass(slots=True)
class HostState:
    """Reachability for the host browser and /metrics."""

    up: bool | None = None
    error: str = ""
    checked: float = 0.0


class WorkerStream:
    """The bytes of one worker request; iterate `chunks()`, then read `outcome`.

    `WorkerError` is raised from `__aenter__` (could not start) or from `chunks()` (the
    gate refused, or the connection dropped). Data already yielded stays yielded: a
    caller that has sent some of it records the failure in its end record.
    """

    def __init__(self, pool: Workers, host: HostConfig, spec: ReadSpec, via: dict[str, Any]):
        self.pool, self.host, self.spec, self.via = pool, host, spec, via
        self.outcome = Outcome()
        self._stream: ClientStream | None = None

    async def __aenter__(self) -> WorkerStream:
        try:
            self._stream = await self.pool.client.start(
                self.host.name, self.spec.request(), via=self.via, positions=self.spec.positions
            )
            signed = self.pool.client.pool.get(self.host.name, self.via.get("user")).signed
            self.outcome.cert_serial = signed.serial if signed is not None else None
        except ClientError as exc:
            self.pool.note(self.host, exc)
            raise _error(exc) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()

    async def chunks(self, *, count_lines: bool = True) -> AsyncIterator[bytes]:
        """The data as it arrives; `count_lines=False` for whole-file downloads, where
        counting would cost the event loop a scan of every byte."""
        async for item in self.items(count_lines=count_lines):
            if isinstance(item, bytes):
                yield item

    async def items(self, *, count_lines: bool = True) -> AsyncIterator[bytes | Position]:
        """Chunks and, for a file follow, the gate's positions, in order."""
        stream = self._stream
        assert stream is not None
        try:
            while chunk := await stream.read_item():
                if isinstance(chunk, Position):
                    yield chunk
                    continue
                self.outcome.bytes += len(chunk)
                if count_lines:
                    self.outcome.lines += chunk.count(b"\n")
                yield chunk
        except ClientError as exc:
            self.pool.note(self.host, exc)
            if isinstance(exc, GateExitError):
                self.outcome.failed_exit = exc.gate_exit
            self.outcome.failure = exc.reason if isinstance(exc, GateExitError) else exc.message
            raise _error(exc) from None
        self.outcome.status = stream.status
        self.pool.note(self.host, None)


class Workers:
    """The web server's view of its workers: the client plus reachability."""

    def __init__(
        self,
        hosts: tuple[HostConfig, ...],
        client: Client | None = None,
        *,
        fleet: FleetSettings | None = None,
        ssh: SshSettings | None = None,
        default_command: Callable[[str], str] | None = None,
    ) -> None:
        """`default_command(user)`: the gate command a certificate forces for a host whose
        config names none (cli passes what `worker setup` installs)."""
        fleet = fleet or FleetSettings()
        self.hosts = {h.name: h for h in hosts}
        if client is None:
            extra: dict[str, Any] = {}
            if ssh is not None and ssh.certificates:
                from ..client.certs import CertPolicy

                policy = CertPolicy.from_settings(ssh, default_command=default_command)
                extra = {
                    "certs": policy,
                    "max_user_connections": ssh.max_user_connections,
                }
            client = Client(hosts, options=PoolOptions.for_fleet(fleet, **extra))
        self.client = client
        self.at_once = fleet.max_hosts_at_once  # hosts a cross-host search works on at once
        self.state: dict[str, HostState] = {h.name: HostState() for h in hosts}

    def note(self, host: HostConfig, exc: ClientError | None) -> None:
        """Reachability from every call: a gate's answer (even a refusal) means it is up."""
        if exc is None or isinstance(exc, GateExitError | InvalidArgument):
            self.state[host.name] = HostState(True, "", time.time())
        else:
            self.state[host.name] = HostState(False, exc.message, time.time())

    def open(self, host: HostConfig, spec: ReadSpec, via: dict[str, Any]) -> WorkerStream:
        """`async with workers.open(...) as s: async for chunk in s.chunks(): ...`"""
        return WorkerStream(self, host, spec, via)

    async def read(
        self, host: HostConfig, spec: ReadSpec, via: dict[str, Any]
    ) -> tuple[bytes, Outcome]:
        """A bounded read, whole (the gate caps lines and bytes; the host's
        `request_timeout` caps its time: 504, the request cancelled on the worker)."""
        buf = bytearray()
        try:
            async with asyncio.timeout(host.request_timeout):
                async with self.open(host, spec, via) as stream:
                    async for chunk in stream.chunks():
                        buf += chunk
        except TimeoutError:
            raise WorkerError(
                504, f"no answer within {host.request_timeout:g} s (request_timeout)"
            ) from None
        return bytes(buf), stream.outcome

    async def sources(self, host: HostConfig, via: dict[str, Any]) -> dict[str, Any]:
        """The gate's `sources`: files (path, size, mtime, compressed), units, containers."""
        try:
            doc = await self.client.sources(host.name, via=via)
        except ClientError as exc:
            self.note(host, exc)
            raise _error(exc) from None
        self.note(host, None)
        return {
            "files": [
                {"path": f.path, "size": f.size, "mtime": f.mtime, "compressed": f.compressed}
                for f in doc.files
            ],
            "units": list(doc.units),
            "containers": list(doc.containers),
            "limits": doc.limits,
        }

    async def probe(self, host: HostConfig) -> HostState:
        """Open (or reuse) the connection; reachability for the host browser."""
        try:
            await self.client.pool.get(host.name).connection()
        except ClientError as exc:
            self.note(host, exc)
        else:
            self.note(host, None)
        return self.state[host.name]

    async def close(self) -> None:
        await self.client.close()
