"""CLI over the client API: `sources`, `tail`, `grep`, `follow`, `journal`, `docker`,
`merge`, `hosts check|trust`.

The same calls the web server makes, so an operator can check a worker from a shell with
the server's own config and key. Log text is neutralised before it reaches the terminal
(see `terminal.py`); `--raw` writes the bytes as they are, but only into a pipe or file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

import asyncssh

from .. import times
from ..client.certs import cli_identity
from ..client.command_line import line_for
from ..client.errors import ClientError, HostKeyChanged, LimitHit, RequestTimeout
from ..client.hosts import host_by_name, select_hosts
from ..client.reads import Client
from ..client.replies import Reply
from ..client.stream import Status, Stream
from ..client.terminal import neutralise
from ..config import Config, HostConfig, load_config
from ..errors import UserError
from ..gate.vocabulary import Docker, Exit, Grep, Journal, Range, Tail


def register(sub: Any) -> None:
    p = sub.add_parser("sources", help="list what a worker's policy lets us read")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--json", action="store_true", help="print the gate's JSON as it is")
    _common(p)
    p.set_defaults(func=_cmd_sources)

    p = sub.add_parser("tail", help="the last lines of a log on a worker")
    p.add_argument("host", metavar="HOST")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-n", "--lines", type=int, default=200, metavar="N")
    _read_options(p)
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser(
        "grep",
        help="search a log on one worker, or on many in parallel",
        usage="logtorukun grep [options] (HOST | --hosts GLOB) PATH PATTERN",
        description="Fixed-string search by default. With --hosts (a name glob or "
        "label:LABEL, repeatable or comma-separated) every matching host is searched in "
        "parallel, each line is prefixed with its host, and a host that fails is reported "
        "on stderr without stopping the others (exit 1 if any failed).",
    )
    p.add_argument("words", nargs="+", metavar="HOST PATH PATTERN")
    p.add_argument("--hosts", action="append", metavar="GLOB", help="hosts or label:LABEL")
    p.add_argument("-E", "--regex", action="store_true", help="extended regex, not fixed")
    p.add_argument("-i", "--ignore-case", action="store_true")
    p.add_argument("-v", "--invert", action="store_true")
    p.add_argument("-c", "--count", action="store_true")
    p.add_argument("-m", "--max-count", type=int, metavar="N")
    p.add_argument("--last", type=int, metavar="N", help="only the last N matches")
    _read_options(p)
    p.set_defaults(func=_cmd_grep)

    p = sub.add_parser("follow", help="follow a log on a worker (tail -F) until Ctrl-C")
    p.add_argument("host", metavar="HOST")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="first the lines since TIME (15m, 2h, today, 2024-12-17 14:00), then follow"
        " from exactly where they end",
    )
    _read_options(p, window=False)
    p.set_defaults(func=_cmd_follow)

    p = sub.add_parser(
        "journal",
        help="a systemd unit's journal on a worker (journalctl -u)",
        description="The last lines of UNIT's journal, a time window, a search (-g, a"
        " PCRE as journalctl takes it), a minimum priority, or a follow (-f).",
    )
    p.add_argument("host", metavar="HOST")
    p.add_argument("unit", metavar="UNIT")
    p.add_argument("-n", "--lines", type=int, default=200, metavar="N")
    p.add_argument("-g", "--grep", metavar="PATTERN", help="only entries matching (PCRE)")
    p.add_argument("-p", "--priority", metavar="PRIO", help="err, warning, 3, ...")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    _read_options(p)
    p.set_defaults(func=_cmd_journal)

    p = sub.add_parser(
        "docker",
        help="a container's logs on a worker (docker logs, through sudo on the worker)",
    )
    p.add_argument("host", metavar="HOST")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("-n", "--tail", type=int, default=200, metavar="N")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    _read_options(p)
    p.set_defaults(func=_cmd_docker)

    p = sub.add_parser(
        "merge",
        help="several logs, on one host or many, interleaved by time",
        usage="logtorukun merge [options] HOST:SOURCE HOST:SOURCE ...",
        description="The last N lines of each HOST:SOURCE (a path, unit:NAME or "
        "container:NAME), merged by their timestamps as the web's merged view does, each "
        "line prefixed with its HOST:SOURCE; a line without a timestamp stays after the line "
        "before it. At most 8 sources. A source that fails is reported on stderr and the "
        "others are printed (exit 1).",
    )
    p.add_argument("sources", nargs="+", metavar="HOST:SOURCE")
    p.add_argument("-n", "--lines", type=int, default=200, metavar="N")
    _read_options(p)
    p.set_defaults(func=_cmd_merge)

    hosts = sub.add_parser("hosts", help="check the configured workers, trust a host key")
    hcmd = hosts.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    p = hcmd.add_parser(
        "check", help="reachability, host key fingerprint and gate version of every host"
    )
    p.add_argument("patterns", nargs="*", metavar="GLOB", help="only these (default: all)")
    p.set_defaults(func=_cmd_check)
    p = hcmd.add_parser(
        "trust",
        help="show a host's key fingerprint; add it to known_hosts with --yes or --fingerprint",
        description="Connects without authenticating, shows the key the host offers, and "
        "appends it to the host's known_hosts file only with --fingerprint matching it (the "
        "safe way: compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the "
        "worker) or --yes. Never replaces a key that is already there for the host.",
    )
    p.add_argument("host", metavar="HOST")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--yes", action="store_true", help="trust the key shown, as it is")
    g.add_argument("--fingerprint", metavar="SHA256:...", help="trust it only if it matches")
    p.set_defaults(func=_cmd_trust)


def _read_options(p: argparse.ArgumentParser, *, window: bool = True) -> None:
    """What every read takes: --since/--until (with `window`), the output's, the SSH's."""
    if window:
        _time_options(p)
    _output_options(p)
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--oneshot",
        action="store_true",
        help="one SSH channel and gate process per request instead of the bridge",
    )
    p.add_argument(
        "--as",
        dest="as_user",
        metavar="USER",
        help="with [ssh] certificates: sign this read's certificate for USER "
        "(default: your login name); needs the user CA key",
    )


def _time_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", metavar="TIME", help="15m, 2h, 7d, today, yesterday or 2024-12-17 14:00 (UTC)"
    )
    p.add_argument("--until", metavar="TIME", help="as --since; the window ends before it")


def _when(args: argparse.Namespace, kind: str) -> tuple[str | None, str | None]:
    """--since/--until in the form the source kind takes (relative forms resolved now)."""
    try:
        since = times.for_source("--since", args.since, kind) if args.since else None
        raw_until = getattr(args, "until", None)  # follow has only --since
        until = times.for_source("--until", raw_until, kind) if raw_until else None
    except times.BadTime as exc:
        raise UserError(str(exc)) from None
    return since, until


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--color",
        "--colour",
        action="store_true",
        help="keep ANSI colours (SGR only; every other escape is still shown)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the log bytes unchanged (refused when stdout is a terminal)",
    )


# ---------------------------------------------------------------------- output


class Printer:
    """Writes log lines to stdout safely, optionally prefixed with their host."""

    def __init__(self, args: argparse.Namespace, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.raw = bool(getattr(args, "raw", False))
        self.colour = bool(getattr(args, "color", False))
        if self.raw and self.out.isatty():
            raise UserError("--raw writes control characters as they are: not to a terminal")
        self.lines = 0

    def write(self, data: bytes, prefix: str = "") -> None:
        if not data:
            return
        if prefix:
            # Whole lines only, each with its host; a missing final newline is added.
            if not data.endswith(b"\n"):
                data += b"\n"
            lines = data.split(b"\n")[:-1]
            self.lines += len(lines)
            pre = prefix.encode()
            data = b"".join(pre + line + b"\n" for line in lines)
        else:
            self.lines += data.count(b"\n")
        if self.raw:
            self.out.flush()
            self.out.buffer.write(data)
            self.out.buffer.flush()
        else:
            text = neutralise(data, colour=self.colour)
            buffer = getattr(self.out, "buffer", None)
            if buffer is not None:  # UTF-8 whatever the locale: log text must not crash us
                self.out.flush()
                buffer.write(text.encode("utf-8", "replace"))
                buffer.flush()
            else:
                self.out.write(text)
                self.out.flush()


def _note(text: str) -> None:
    print(f"logtorukun: {neutralise(text)}", file=sys.stderr, flush=True)


def _limit_note(host: str, status: Status) -> None:
    _note(f"{host}: output truncated: {status.reason or 'a gate limit was hit'}")


def _run(args: argparse.Namespace, body: Callable[[Config], Coroutine[Any, Any, int]]) -> int:
    config = load_config(args.config)
    as_user = getattr(args, "as_user", None)
    if config.ssh is not None and config.ssh.certificates:
        args.identity = cli_identity(as_user)
    elif as_user:
        raise UserError(f"--as {as_user}: needs [ssh] certificates = true in {config.path}")
    return asyncio.run(body(config))


def _client(config: Config, args: argparse.Namespace) -> Client:
    return Client(config, oneshot=args.oneshot, identity=getattr(args, "identity", None))


# ---------------------------------------------------------------------- commands


def _cmd_sources(args: argparse.Namespace) -> int:
    async def body(config: Config) -> int:
        host = host_by_name(config, args.host).name
        async with _client(config, args) as client:
            if args.json:
                reply = await client.run(host, "sources")
                sys.stdout.write(neutralise(reply.data))
                return 0
            src = await client.sources(host)
        out = [f"# {host}: gate {src.gate}"]
        for f in src.files:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.mtime))
            out.append(f"{f.size:>12}  {stamp}  {f.path}")
        out += [f"unit:{u}" for u in src.units]
        out += [f"container:{c}" for c in src.containers]
        print(neutralise("\n".join(out)))
        return 0

    return _run(args, body)


def _cmd_tail(args: argparse.Namespace) -> int:
    printer = Printer(args)

    since, until = _when(args, "file")

    async def body(config: Config) -> int:
        host = host_by_name(config, args.host).name
        async with _client(config, args) as client:
            if since or until:  # the gate's range: the first N lines of the window
                reply = await client.range(
                    host, args.path, since or "1970-01-01", until, max_lines=args.lines
                )
            else:
                reply = await client.tail(host, args.path, args.lines)
        return _finish_single(reply, printer)

    return _run(args, body)


def _finish_single(reply: Reply, printer: Printer) -> int:
    printer.write(reply.data)
    err = reply.limit_error()
    if err is not None:
        raise LimitHit(reply.host, Exit.LIMIT, err.reason)
    return 0


def _cmd_follow(args: argparse.Namespace) -> int:
    printer = Printer(args)

    since = _when(args, "file")[0] if args.since else None

    async def body(config: Config) -> int:
        host = host_by_name(config, args.host).name
        async with _client(config, args) as client:
            if since is None:
                stream = await client.follow(host, args.path, lines=args.lines)
            else:
                window = await client.run(host, line_for(Range(args.path, since)))
                printer.write(window.data)
                if window.status.pos is None:  # the window was cut at a limit
                    raise LimitHit(host, Exit.LIMIT, window.status.reason or "range cut")
                command = line_for(Tail(args.path, 0, follow=True, start=window.status.pos))
                stream = await client.stream(host, command)
            await _print_stream(host, stream, printer)
        return 0

    return _run(args, body)


def _grep_window(window: Reply, pattern: str, args: argparse.Namespace) -> Reply:
    """grep's options applied here to a time window the gate's `range` sent (Python's
    regex for -E; the window is capped by the gate's max_lines, as any read is)."""
    import re

    flags = re.IGNORECASE if args.ignore_case else 0
    try:
        rx = re.compile(pattern.encode() if args.regex else re.escape(pattern.encode()), flags)
    except re.error as exc:
        raise UserError(f"grep: bad regular expression {pattern!r}: {exc}") from None
    lines = [
        ln for ln in window.data.splitlines(keepends=True) if bool(rx.search(ln)) != args.invert
    ]
    if args.max_count is not None:
        lines = lines[: args.max_count]
    if args.last is not None:
        lines = lines[-args.last :] if args.last else []
    data = f"{len(lines)}\n".encode() if args.count else b"".join(lines)
    return Reply(window.host, window.command, data, window.status)


def _cmd_journal(args: argparse.Namespace) -> int:
    since, until = _when(args, "unit")
    lines = 0 if args.follow and not args.lines else args.lines
    request = Journal(args.unit, lines, since, until, args.grep, args.priority, follow=args.follow)
    command = line_for(request)
    return _run_command(args, command, follow=args.follow)


def _cmd_docker(args: argparse.Namespace) -> int:
    since, until = _when(args, "container")
    request = Docker(args.container, args.tail, args.timestamps, since, until, args.follow)
    command = line_for(request)
    return _run_command(args, command, follow=args.follow)


def _run_command(args: argparse.Namespace, command: str, *, follow: bool) -> int:
    """One gate command on one host: its output as it comes (a follow until Ctrl-C)."""
    printer = Printer(args)

    async def body(config: Config) -> int:
        host = host_by_name(config, args.host).name
        async with _client(config, args) as client:
            if not follow:
                return _finish_single(await client.run(host, command), printer)
            await _print_stream(host, await client.stream(host, command), printer)
        return 0

    return _run(args, body)


async def _print_stream(host: str, stream: Stream, printer: Printer) -> None:
    """A follow's lines as they come, until it ends (or Ctrl-C); a cut is noted."""
    async with stream:
        async for line in stream.lines():  # whole lines: no UTF-8 or escape split
            printer.write(line)
    if stream.status is not None and stream.status.truncated:
        _limit_note(host, stream.status)


def _merge_read(spec: str, args: argparse.Namespace) -> tuple[str, str, str]:
    """HOST:SOURCE -> (host, source, the gate command that reads its last lines)."""
    from ..web.merge import host_source

    try:
        host, key = host_source(spec)
    except ValueError as exc:
        raise UserError(f"merge: {exc}") from None
    if key.startswith("unit:"):
        since, until = _when(args, "unit")
        return host, key, line_for(Journal(key[5:], args.lines, since, until))
    if key.startswith("container:"):
        since, until = _when(args, "container")
        return host, key, line_for(Docker(key[10:], args.lines, True, since, until))
    since, until = _when(args, "file")
    if since or until:
        return host, key, line_for(Range(key, since or "1970-01-01", until, args.lines))
    return host, key, line_for(Tail(key, args.lines))


def _cmd_merge(args: argparse.Namespace) -> int:
    from ..web.merge import MAX_SOURCES, merge  # the web's merge core (no web server)

    if len(args.sources) > MAX_SOURCES:
        raise UserError(f"merge: at most {MAX_SOURCES} sources ({len(args.sources)} given)")
    reads = [_merge_read(s, args) for s in args.sources]
    printer = Printer(args)

    async def body(config: Config) -> int:
        hosts = [host_by_name(config, host).name for host, _, _ in reads]
        async with _client(config, args) as client:
            replies = await asyncio.gather(
                *(client.run(h, cmd) for h, (_, _, cmd) in zip(hosts, reads, strict=True)),
                return_exceptions=True,
            )
        per_source: list[list[str]] = []
        failed = 0
        labels = [f"{h}:{key}" for h, (_, key, _) in zip(hosts, reads, strict=True)]
        for label, reply in zip(labels, replies, strict=True):
            if isinstance(reply, ClientError):
                _note(f"{label}: {reply}")
                failed += 1
                per_source.append([])
                continue
            if isinstance(reply, BaseException):
                raise reply
            if reply.truncated:
                _limit_note(label, reply.status)
            per_source.append(reply.text.splitlines())
        window = bool(args.since or args.until)  # a window's first N, else the last N
        merged = merge(per_source, limit=args.lines, keep="first" if window else "last")
        for i in merged.undated:
            _note(f"{labels[i]}: no timestamps found, its lines come first")
        for i, line in zip(merged.src, merged.lines, strict=True):
            printer.write(line.encode() + b"\n", prefix=f"{labels[i]} ")
        return 1 if failed else 0

    return _run(args, body)


def _cmd_grep(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if args.hosts:
        if len(words) != 2:
            raise UserError(
                "grep --hosts GLOB takes PATH PATTERN (a pattern starting with '-' goes after `--`)"
            )
        host_arg, (path, pattern) = None, words
    else:
        if len(words) != 3:
            raise UserError("grep takes HOST PATH PATTERN, or --hosts GLOB PATH PATTERN")
        host_arg, path, pattern = words
    command = line_for(
        Grep(
            path,
            pattern,
            regex=args.regex,
            ignore_case=args.ignore_case,
            invert=args.invert,
            count=args.count,
            max_count=args.max_count,
            tail=args.last,
        )
    )
    printer = Printer(args)
    since, until = _when(args, "file")
    if (since or until) and host_arg is None:
        raise UserError("grep --since/--until reads one host's file: give HOST, not --hosts")

    async def body(config: Config) -> int:
        if host_arg is not None:
            host = host_by_name(config, host_arg).name
            async with _client(config, args) as client:
                if since or until:
                    window = await client.range(host, path, since or "1970-01-01", until)
                    reply = _grep_window(window, pattern, args)
                else:
                    reply = await client.run(host, command)
            code = _finish_single(reply, printer)
            if args.count:
                return 1 if reply.data.strip() in (b"", b"0") else code
            if not reply.data:
                _note("no matches")  # and exit 1, as grep does
                return 1
            return code
        hosts = select_hosts(config, args.hosts)
        async with _client(config, args) as client:
            return await grep_hosts(
                client, hosts, command, printer, at_once=config.fleet.max_hosts_at_once
            )

    return _run(args, body)


async def grep_hosts(
    client: Client,
    hosts: list[HostConfig],
    command: str,
    printer: Printer,
    *,
    progress_after: float = 1.0,
    at_once: int = 64,
) -> int:
    """Run `command` on every host, `at_once` hosts at a time; lines prefixed `host: ` as
    each host sends them; a host that fails or passes its `request_timeout` is reported
    and the others go on; 1 if any host failed."""
    width = max(len(h.name) for h in hosts)
    failed: list[str] = []
    done = 0
    progress = _Progress(len(hosts))
    turns = asyncio.Semaphore(at_once)

    async def one(h: HostConfig) -> None:
        nonlocal done
        prefix = f"{h.name}:".ljust(width + 2)
        try:
            async with turns:
                stream = await client.stream(h.name, command)
                async with stream:
                    try:
                        async with asyncio.timeout(h.request_timeout):
                            async for chunk in stream.lines():
                                progress.clear()
                                printer.write(chunk, prefix)
                    except TimeoutError:
                        raise RequestTimeout(
                            h.name,
                            f"no end within {h.request_timeout:g} s (request_timeout);"
                            " its lines above may be incomplete",
                        ) from None
            if stream.status is not None and stream.status.truncated:
                progress.clear()
                _limit_note(h.name, stream.status)
        except ClientError as exc:
            failed.append(h.name)
            progress.clear()
            _note(str(exc))
        finally:
            done += 1
            progress.update(done, len(failed), printer.lines)

    ticker = asyncio.create_task(progress.tick(progress_after))
    try:
        await asyncio.gather(*(one(h) for h in hosts))
    finally:
        ticker.cancel()
        progress.clear()
    if progress.shown or failed:
        ok = len(hosts) - len(failed)
        names = [h.name for h in hosts if h.name in failed]  # config order, not finish order
        which = f" ({', '.join(names)})" if failed else ""
        _note(
            f"grep: {len(hosts)} hosts, {ok} answered, {len(failed)} failed{which},"
            f" {printer.lines} lines"
        )
    return 1 if failed else 0


class _Progress:
    """`[3/10 hosts, 1 failed, 1200 lines]` on stderr once a run lasts; redrawn on a tty."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.text = ""
        self.shown = False
        self.tty = sys.stderr.isatty()
        self._drawn = False

    def update(self, done: int, failed: int, lines: int) -> None:
        self.text = f"[{done}/{self.total} hosts, {failed} failed, {lines} lines]"
        if self.shown and self.tty:
            self._draw()

    async def tick(self, after: float) -> None:
        await asyncio.sleep(after)
        self.shown = True
        while True:
            self._draw()
            await asyncio.sleep(0.5 if self.tty else 5.0)

    def _draw(self) -> None:
        if not self.text:
            self.text = f"[0/{self.total} hosts]"
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{self.text}")
            self._drawn = True
        else:
            sys.stderr.write(f"logtorukun: grep: {self.text}\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False


# ---------------------------------------------------------------------- hosts


def _cmd_check(args: argparse.Namespace) -> int:
    async def body(config: Config) -> int:
        hosts = select_hosts(config, args.patterns) if args.patterns else list(config.hosts)
        if not hosts:
            raise UserError(f"{config.path}: no [[host]] configured")
        async with Client(config) as client:
            rows = await asyncio.gather(*(check_host(client, h) for h in hosts))
        head = ("HOST", "ADDRESS", "GATE", "MS", "FINGERPRINT", "STATUS")
        table = [head, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
        for r in table:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            print(neutralise("  ".join([*cells, r[-1]]).rstrip()))
        return 1 if any(r[-1] != "ok" for r in rows) else 0

    return _run(args, body)


async def check_host(client: Client, h: HostConfig) -> tuple[str, str, str, str, str, str]:
    """One row of `hosts check`: connect, start the bridge, read the gate's HELLO."""
    hc = client.pool.get(h.name)
    t0 = time.perf_counter()
    status, gate = "ok", ""
    try:
        bridge = await hc.bridge()
        gate = str(bridge.hello.get("gate", ""))
    except ClientError as exc:
        status = f"{_kind(exc)}: {exc.message}"
    ms = f"{(time.perf_counter() - t0) * 1000:.0f}"
    return (h.name, f"{h.address}:{h.port}", gate or "-", ms, hc.fingerprint or "-", status)


def _kind(exc: ClientError) -> str:
    name = type(exc).__name__
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()


def _cmd_trust(args: argparse.Namespace) -> int:
    async def body(config: Config) -> int:
        h = host_by_name(config, args.host)
        return await trust_host(h, yes=args.yes, fingerprint=args.fingerprint)

    return _run(args, body)


async def trust_host(h: HostConfig, *, yes: bool = False, fingerprint: str | None = None) -> int:
    """Show the host's key; append it to known_hosts if confirmed. Never replaces a key."""
    from ..client.errors import Unreachable

    try:
        async with asyncio.timeout(h.connect_timeout):
            key = await asyncssh.get_server_host_key(h.address, h.port, config=None)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise Unreachable(
            h.name,
            f"cannot fetch the host key of {h.address}:{h.port}: {exc or type(exc).__name__}",
        ) from None
    if key is None:
        raise Unreachable(h.name, "the server presented no host key")
    fp = key.get_fingerprint("sha256")
    print(f"{h.name} ({h.address}:{h.port}) offers {key.get_algorithm()} key {fp}")
    known, cas = _known_keys(h)
    if cas:
        print(f"{h.known_hosts} trusts a certificate authority for this host: nothing to add")
        return 0
    if any(k.public_data == key.public_data for k in known):
        print(f"already trusted in {h.known_hosts}")
        return 0
    if known:
        raise HostKeyChanged(
            h.name,
            f"{h.known_hosts} already holds another key for {h.address}:{h.port}; not adding"
            f" this one. If the change is expected, remove the old entry first"
            f" (ssh-keygen -R '{_pattern(h)}' -f {h.known_hosts})",
        )
    if fingerprint is not None:
        if fingerprint.strip() != fp:
            raise UserError(
                f"{h.name}: fingerprint mismatch: expected {fingerprint.strip()},"
                f" the host offers {fp}; nothing written"
            )
    elif not yes:
        print(
            "not written: compare it with the worker's own key (on the worker:"
            " ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again with"
            f" --fingerprint {fp}"
        )
        return 1
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    _append(h.known_hosts, f"{_pattern(h)} {algorithm} {blob}\n")
    print(f"added to {h.known_hosts}")
    return 0


def _pattern(h: HostConfig) -> str:
    return h.address if h.port == 22 else f"[{h.address}]:{h.port}"


def _known_keys(h: HostConfig) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
    """The host keys and the CA keys known_hosts trusts for this host."""
    if not h.known_hosts.exists():
        return [], []
    try:
        known = asyncssh.read_known_hosts(str(h.known_hosts))
    except (OSError, ValueError) as exc:
        raise UserError(f"{h.known_hosts}: cannot read known_hosts: {exc}") from None
    keys, cas, *_ = known.match(h.address, h.address, h.port)
    return list(keys), list(cas)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        f.write(line)
