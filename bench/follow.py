"""Follow latency: write() on the worker to the line at the reader, side by side in one run.

    .venv/bin/python -m bench.follow [--viewers 200] [--slow-lines 100] [--fast-lines 3000]
                                     [--only tail|client|web1|web ...]

A separate writer process appends lines carrying their write time (`time.time()`) to a
log on a real sshd worker, at 10/s and at 1,000/s. Readers, in turn:
- local `tail -F -n 0` (coreutils, inotify): the anchor, no SSH at all;
- the SSH client alone (`Client.follow` over the bridge), no web server;
- the web server (`logtorukun serve`, its own process) with 1 viewer and with N SSE
  viewers of the same file (one upstream follow on the worker).

Each row: p50/p95 of (arrival - write time) over every line at every reader, lines
delivered of lines expected, the RSS of the web server, and the CPU time of the web
server and of this process (the SSE readers: bare protocols on uvloop, so that 200 of
them cost less than the server they measure) per line delivered. Prints a table and
writes docs/benchmarks-follow.md (not with --only). Needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import uvloop

from bench._stats import pct
from bench.web import FOLLOW_LOG, rss_mib, worker_and_server
from logtorukun.client import Client
from logtorukun.config import load_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks-follow.md"
MARK = " bench-t="

# Paced by absolute deadlines (no drift), one write() per line, O_APPEND like a logger.
WRITER = """
import os, sys, time
path, rate, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
t0 = time.monotonic()
for i in range(n):
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    line = "2024-12-17 14:00:00 INFO  [bench] line %d%s%.6f\\n" % (i, MARK, time.time())
    os.write(fd, line.encode())
os.close(fd)
""".replace("MARK", repr(MARK))


def write_lines(path: Path, rate: float, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rate), str(n)])


def latency_of(text: str, now: float) -> float | None:
    i = text.rfind(MARK)
    return now - float(text[i + len(MARK) :]) if i >= 0 else None


class Result:
    def __init__(self, expected: int) -> None:
        self.delays: list[float] = []
        self.expected = expected
        self.server_cpu: float | None = None  # seconds, while the writer ran
        self.reader_cpu = 0.0  # this process's CPU seconds over the same time

    def row(self, name: str, rss: str = "") -> str:
        d = self.delays or [float("nan")]
        per_line = reader = ""
        if self.server_cpu is not None and self.delays:
            per_line = f"{self.server_cpu / len(self.delays) * 1e6:.1f}"
            reader = f"{self.reader_cpu / len(self.delays) * 1e6:.1f}"
        return (
            f"| {name} | {statistics.median(d) * 1e3:.2f} | {pct(d, 95) * 1e3:.2f} "
            f"| {len(self.delays):,} of {self.expected:,} | {rss} | {per_line} | {reader} |"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_writer(path: Path, rate: float, n: int) -> None:
    proc = write_lines(path, rate, n)
    while proc.poll() is None:
        await asyncio.sleep(0.05)


async def until_all(
    result: Result, writer: Awaitable[None], tasks: list[asyncio.Task[None]]
) -> None:
    await writer
    # Everything was written; give the readers a bounded time to receive the rest.
    await asyncio.wait(tasks, timeout=20)
    for t in tasks:
        t.cancel()


async def bench_tail(path: Path, rate: float, n: int) -> Result:
    res = Result(n)
    proc = await asyncio.create_subprocess_exec(
        "tail", "-F", "-n", "0", str(path), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def read() -> None:
        got = 0
        while got < n:
            line = await stdout.readline()
            if not line:
                return
            d = latency_of(line.decode(), time.time())
            if d is not None:
                res.delays.append(d)
                got += 1

    task = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # tail has set up its watch
    await until_all(res, run_writer(path, rate, n), [task])
    proc.kill()
    await proc.wait()
    return res


async def bench_client(config: Path, path: Path, rate: float, n: int) -> Result:
    res = Result(n)
    async with Client(load_config(config)) as client:
        stream = await client.follow("web1", str(path), lines=0)

        async def read() -> None:
            got = 0
            async for line in stream.lines():
                d = latency_of(line.decode(), time.time())
                if d is not None:
                    res.delays.append(d)
                    got += 1
                    if got >= n:
                        return

        task = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        await until_all(res, run_writer(path, rate, n), [task])
        await stream.aclose()
    return res


STAMP = re.compile(rb"bench-t=(\d+\.\d{6})")


class SSEViewer(asyncio.Protocol):
    """One SSE viewer as a bare protocol: each read is one callback that finds the stamps
    with one regex (no stream reader, no task, no HTTP or SSE parsing), so 200 viewers
    in the benchmark's one process cost far less than the server they measure."""

    def __init__(self, request: bytes, n: int, res: Result, on_ready: Callable[[], None]) -> None:
        self.request, self.n, self.res, self.on_ready = request, n, res, on_ready
        self.got = 0
        self.carry = b""
        self.ready = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, chunk: bytes) -> None:
        now = time.time()
        data = self.carry + chunk if self.carry else chunk
        if not self.ready and b"event: ready" in data:
            self.ready = True
            self.on_ready()
        cut = data.rfind(b"\n") + 1  # a stamp ends its line: only whole lines here
        delays = self.res.delays
        for m in STAMP.finditer(data, 0, cut):
            delays.append(now - float(m.group(1)))
            self.got += 1
        self.carry = data[cut:]
        if self.got >= self.n and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def sse_viewer(
    port: int, token: str, path: Path, n: int, res: Result, on_ready: Callable[[], None]
) -> None:
    query = urllib.parse.urlencode({"path": str(path)})
    request = (
        f"GET /api/hosts/web1/follow?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    proto = SSEViewer(request, n, res, on_ready)
    transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
    try:
        await proto.done
    finally:
        transport.close()


async def bench_web(
    port: int, token: str, path: Path, viewers: int, rate: float, n: int, pid: int
) -> tuple[Result, float]:
    res = Result(n * viewers)
    ready = asyncio.Event()
    connected = 0

    def on_ready() -> None:
        nonlocal connected
        connected += 1
        if connected == viewers:
            ready.set()

    tasks = [
        asyncio.create_task(sse_viewer(port, token, path, n, res, on_ready)) for _ in range(viewers)
    ]
    await asyncio.wait_for(ready.wait(), 120)
    await asyncio.sleep(1.0)  # the upstream follow is running
    server0, reader0 = cpu_seconds(pid), time.process_time()
    await until_all(res, run_writer(path, rate, n), tasks)
    res.server_cpu = cpu_seconds(pid) - server0
    res.reader_cpu = time.process_time() - reader0
    return res, rss_mib(pid)


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.follow")
    ap.add_argument("--viewers", type=int, default=200)
    ap.add_argument("--slow-lines", type=int, default=100, help="lines at 10/s")
    ap.add_argument("--fast-lines", type=int, default=3000, help="lines at 1,000/s")
    ap.add_argument(
        "--only",
        choices=["tail", "client", "web1", "web"],
        action="append",
        help="run only these readers (repeatable; default: all four)",
    )
    args = ap.parse_args()
    rows: list[str] = []
    load = os.getloadavg()[0]
    with worker_and_server("bench-follow", max_follows_per_user=args.viewers + 10) as (w, srv):
        log = w.root / FOLLOW_LOG
        config, port, token, pid = srv.config, srv.port, srv.token, srv.proc.pid
        for rate, n in ((10.0, args.slow_lines), (1000.0, args.fast_lines)):
            label = f"{rate:,.0f}/s"

            async def local(rate: float = rate, n: int = n) -> tuple[Result, str]:
                return await bench_tail(log, rate, n), ""

            async def client(rate: float = rate, n: int = n) -> tuple[Result, str]:
                return await bench_client(config, log, rate, n), ""

            def web(
                v: int, rate: float = rate, n: int = n
            ) -> Callable[[], Coroutine[Any, Any, tuple[Result, str]]]:
                async def run() -> tuple[Result, str]:
                    r, rss = await bench_web(port, token, log, v, rate, n, pid)
                    return r, f"{rss:.0f} MiB"

                return run

            runs = [
                ("tail", f"local `tail -F` (inotify, no SSH), {label}", local),
                ("client", f"SSH client alone (bridge), {label}", client),
                ("web1", f"web server, 1 viewer, {label}", web(1)),
                ("web", f"web server, {args.viewers} viewers, {label}", web(args.viewers)),
            ]
            for key, name, fn in runs:
                if args.only and key not in args.only:
                    continue
                print(f"bench.follow: {name} ...", file=sys.stderr, flush=True)
                res, rss = uvloop.run(fn())
                rows.append(res.row(name, rss))
    head = (
        f"Command: `.venv/bin/python -m bench.follow` ({os.cpu_count()} CPUs, shared: load "
        f"average {load:.1f} at the start; worker sshd, web server and readers on loopback)\n\n"
        "Delay from the writer's `write()` to the line at the reader; every line at every "
        "reader counts.\n"
    )
    table = [
        "| reader, append rate | p50 ms | p95 ms | lines delivered | web server RSS "
        "| server CPU µs per line delivered | reader CPU µs per line |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    text = head + "\n" + "\n".join(table) + "\n"
    print(text)
    if not args.only:
        OUT.write_text("# Follow latency\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
