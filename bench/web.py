"""The web server end to end over HTTP on loopback, against a real sshd worker.

    .venv/bin/python -m bench.web [--requests 500] [--followers 200]

Rows:
- `GET /api/hosts/web1/tail?lines=200` p50/p95, one client in sequence and 8 at once;
  each request writes its audit start and end records (SQLite WAL) and goes through the
  bridge session to the gate. Next to it, the original article's way (docs/security.md):
  a fresh `ssh` process per `tail -n 200` (no web server, no audit), and local
  `tail -n 200`.
- N concurrent followers of one file: how many upstream follows the worker sees, the
  delay from a line's write() to its arrival at every follower (p50/p95), and the
  server's RSS with all of them connected.
- The audit store's append rate (one record per call, as the server writes them).

The server runs as its own process (`logtorukun serve`), so RSS is the server's alone.
Prints a table and writes docs/benchmarks-web.md. Needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._stats import ms, pct
from logtorukun.audit import AuditStore
from tests.support.sshd import Worker
from tests.web.support import free_port, write_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks-web.md"
FOLLOW_LOG = "follow.log"  # in a bench worker's root: written by the benchmark, followed


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    py = sys.executable
    proc = subprocess.Popen(
        [py, "-m", "logtorukun", "--config", str(config), "serve", "--log-level", "warning"],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server's orderly shutdown), a kill if it has not ended in 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class BenchServer:
    """A `logtorukun serve` process on loopback and the API token of its user `bench`.
    As tests/web/support.py's `served`, but at --log-level warning: an access-log line
    per request is not part of what the benchmarks measure."""

    proc: subprocess.Popen[bytes]
    config: Path
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def bench_server(directory: Path, worker: Worker, **server: Any) -> BenchServer:
    """A config for `worker` in `directory` (`server`: its [server] settings), the user
    `bench` with a token, and the server started on a free port."""
    port = free_port()
    config = write_config(directory, worker, listen=f"127.0.0.1:{port}", **server)
    token = bench_token(config)
    return BenchServer(start_server(config, port), config, port, token)


@contextlib.contextmanager
def worker_and_server(name: str, **server: Any) -> Iterator[tuple[Worker, BenchServer]]:
    """A throwaway sshd worker with an empty log FOLLOW_LOG in its root to follow, and a
    server for it (`server`: [server] settings); both stopped and removed at the end."""
    w = Worker(name=name)
    srv: BenchServer | None = None
    with tempfile.TemporaryDirectory(prefix=f"logtorukun-{name}-") as tmp:
        try:
            w.start()
            follow = w.root / FOLLOW_LOG
            follow.write_text("")
            follow.chmod(0o644)
            srv = bench_server(Path(tmp), w, **server)
            yield w, srv
        finally:
            if srv is not None:
                stop_server(srv.proc)
            w.destroy()


def cli(config: Path, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "logtorukun", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return r.stdout.strip()


def bench_token(config: Path) -> str:
    """A user `bench` (role ops) and an API token for it, for the HTTP benchmarks."""
    cli(
        config,
        "user",
        "add",
        "bench",
        "--role",
        "ops",
        "--password-stdin",
        stdin="bench password 1\n",
    )
    return cli(config, "token", "create", "bench")


def latency_row(name: str, samples: list[float]) -> tuple[str, str, str]:
    """A table row: the median and 95th percentile of `samples` (seconds)."""
    return (name, f"p50 {ms(statistics.median(samples))}", f"p95 {ms(pct(samples, 95))}")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds each of `n` calls of `fn` took, one after the other."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def bench_tail(url: str, token: str, path: str, n: int, clients: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()
    per = max(1, n // clients)

    def run() -> None:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as c:
            local = []
            for _ in range(per):
                t0 = time.perf_counter()
                r = c.get("/api/hosts/web1/tail", params={"path": path, "lines": 200})
                local.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.json()["count"] == 200, r.text
            with lock:
                times.extend(local)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


async def bench_followers(
    url: str, token: str, path: Path, n: int, lines: int, server_pid: int
) -> dict[str, float]:
    """n SSE readers of one file; each appended line carries its write time."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    arrivals: list[float] = []
    got = [0] * n
    ready = asyncio.Event()
    connected = 0

    async def follower(i: int, client: httpx.AsyncClient) -> None:
        nonlocal connected
        async with client.stream(
            "GET",
            "/api/hosts/web1/follow",
            params={"path": str(path)},
            headers={"authorization": f"Bearer {token}"},
        ) as r:
            assert r.status_code == 200, await r.aread()
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    if event == "ready":
                        connected += 1
                        if connected == n:
                            ready.set()
                elif line.startswith("data:") and event == "lines":
                    now = time.time()
                    for text in json.loads(line[5:])["lines"]:
                        if " bench-t=" in text:
                            arrivals.append(now - float(text.rsplit("=", 1)[1]))
                            got[i] += 1
                    if got[i] >= lines:
                        return

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(follower(i, client)) for i in range(n)]
        await asyncio.wait_for(ready.wait(), 60)
        # Let the upstream tail -F settle, then write lines at 100/s.
        await asyncio.sleep(1.0)
        rss_connected = rss_mib(server_pid)
        upstreams = 0
        metrics = (await client.get("/metrics")).text
        for m in metrics.splitlines():
            if m.startswith("logtorukun_follow_upstreams "):
                upstreams = int(float(m.split()[1]))
        with open(path, "a") as f:
            for _ in range(lines):
                f.write(f"2024-12-17 14:00:00 INFO bench-t={time.time():.6f}\n")
                f.flush()
                await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        rss_after = rss_mib(server_pid)
    return {
        "p50": statistics.median(arrivals),
        "p95": pct(arrivals, 95),
        "delivered": len(arrivals),
        "expected": n * lines,
        "upstreams": upstreams,
        "rss_connected": rss_connected,
        "rss_after": rss_after,
    }


async def bench_direct_follow(config_path: Path, path: Path, lines: int) -> list[float]:
    """The same follow through the SSH client alone (no web server): the floor."""
    from logtorukun.client import Client
    from logtorukun.config import load_config

    arrivals: list[float] = []
    async with Client(load_config(config_path)) as client:
        stream = await client.follow("web1", str(path), lines=0)

        async def read() -> None:
            async for line in stream.lines():
                text = line.decode()
                if " bench-t=" in text:
                    arrivals.append(time.time() - float(text.rsplit("=", 1)[1]))
                    if len(arrivals) >= lines:
                        return

        task = asyncio.create_task(read())
        await asyncio.sleep(1.0)
        with open(path, "a") as f:
            for _ in range(lines):
                f.write(f"2024-12-17 14:00:00 INFO bench-t={time.time():.6f}\n")
                f.flush()
                await asyncio.sleep(0.01)
        await asyncio.wait_for(task, 60)
        await stream.aclose()
    return arrivals


def bench_audit(directory: Path, n: int) -> float:
    store = AuditStore(directory / "audit-bench.db")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            store.append(
                "read",
                user="bench",
                roles=["ops"],
                client="127.0.0.1",
                action="tail",
                host="web1",
                source="/var/log/app.log",
                params={"lines": 200, "i": i},
                decision="allow",
                reason="bench",
            )
        return n / (time.perf_counter() - t0)
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.web")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--followers", type=int, default=200)
    ap.add_argument("--follow-lines", type=int, default=100)
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with worker_and_server("bench-web", max_follows_per_user=args.followers + 10) as (w, srv):
        proc, config, url, token = srv.proc, srv.config, srv.url, srv.token
        follow = w.root / FOLLOW_LOG
        path = str(w.app_log)
        bench_tail(url, token, path, 50, 1)  # warm up: connection, bridge, caches
        seq = bench_tail(url, token, path, args.requests, 1)
        rows.append(latency_row("tail -n 200 via HTTP, 1 client (audit incl.)", seq))
        par = bench_tail(url, token, path, args.requests, 8)
        rows.append(latency_row("tail -n 200 via HTTP, 8 clients at once", par))

        def fresh_ssh() -> None:
            assert w.ssh(f"tail -n 200 {path}").returncode == 0

        fresh = timed(fresh_ssh, 20)
        rows.append(
            latency_row(
                "the original article's way: fresh `ssh` per tail -n 200 (no web, no audit)", fresh
            )
        )
        tail = ["tail", "-n", "200", path]
        local = timed(lambda: subprocess.run(tail, capture_output=True, check=True), 50)
        rows.append(latency_row("local `tail -n 200` process", local))
        rows.append(("server RSS after the tail runs", f"{rss_mib(proc.pid):.0f} MiB", ""))
        f = asyncio.run(
            bench_followers(url, token, follow, args.followers, args.follow_lines, proc.pid)
        )
        rows.append(
            (
                f"{args.followers} followers of one file: upstream follows on the worker",
                f"{f['upstreams']}",
                "",
            )
        )
        rows.append(
            (
                f"{args.followers} followers: write() to arrival, {args.follow_lines} "
                "lines at 100/s",
                f"p50 {ms(f['p50'])}",
                f"p95 {ms(f['p95'])}",
            )
        )
        rows.append(
            (
                f"{args.followers} followers: lines delivered",
                f"{int(f['delivered'])} of {int(f['expected'])}",
                "",
            )
        )
        rows.append(
            (
                f"server RSS with {args.followers} followers connected",
                f"{f['rss_connected']:.0f} MiB",
                f"after: {f['rss_after']:.0f} MiB",
            )
        )
        direct = asyncio.run(bench_direct_follow(config, follow, args.follow_lines))
        rows.append(
            latency_row(
                "for comparison: 1 follower through the SSH client alone (no web server)", direct
            )
        )
        rate = bench_audit(config.parent, 5000)
        rows.append(
            (
                "audit store appends (SQLite WAL, synchronous=NORMAL)",
                f"{rate:,.0f} records/s",
                f"{1e6 / rate:.0f} µs each",
            )
        )
    cpu = os.cpu_count()
    table = ["| measurement | value | |", "|---|---:|---:|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    head = (
        f"Command: `.venv/bin/python -m bench.web` ({args.requests} requests, "
        f"{args.followers} followers; {cpu} CPUs; server and worker on loopback)\n"
    )
    text = head + "\n" + "\n".join(table) + "\n"
    print(text)
    OUT.write_text("# Web server benchmarks\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
