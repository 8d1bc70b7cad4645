"""How a cross-host grep grows with the fleet: 1, 8, 32 and 128 real sshd workers.

    .venv/bin/python -m bench.fleet [--sizes 1,8,32,128] [--warm-runs 7] [--cold-runs 3]

Each worker is its own OpenSSH sshd on loopback with the gate as forced command and the
sample app.log (~800 lines). The run is `grep --hosts` (`cli.logs.grep_hosts`,
the CLI's own function, lines prefixed and neutralised for a terminal) for `ERROR`
(~65 lines per host), in this process, with the `[fleet]` defaults (max_connecting 32,
max_hosts_at_once 64):

- cold: a fresh pool, so every host pays its handshake and its bridge's gate start-up;
- warm: the same pool again (connections and bridges open).

Reported: time to the first line and to the last (medians), the CPU time of this process
per host answered (user + system: the web server's own cost, which is what grows on a
real deployment; the workers' sshd and gates run on the same two cores here, so wall
time also pays their work), and RSS growth per connected idle worker (connection plus
bridge, measured after a `gc.collect()`). Every process is stopped at the end (and by an
atexit net). Prints a table and writes docs/benchmarks-fleet.md. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.client import host
from logtorukun.cli.logs import Printer
from logtorukun.cli.logs import grep_hosts as run_grep
from logtorukun.client import Client
from logtorukun.client.command_line import line_for
from logtorukun.config import FleetSettings, HostConfig
from logtorukun.gate.vocabulary import Grep
from logtorukun.ops.sample_logs import sample_app_log
from tests.support.sshd import USER, Worker

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-fleet.md"
PATTERN = "ERROR"
RUN_TIMEOUT = 300.0  # one grep over the whole fleet, at most


class _Args:
    raw = False
    color = False


class Timed(Printer):
    """The CLI's printer into memory, noting when the first line came."""

    def __init__(self) -> None:
        super().__init__(_Args(), io.StringIO())  # type: ignore[arg-type]
        self.first: float | None = None

    def write(self, data: bytes, prefix: str = "") -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super().write(data, prefix)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def grep_once(
    client: Client, hosts: list[HostConfig], command: str, expect: int
) -> dict[str, float]:
    printer = Timed()
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT):
        code = await run_grep(
            client,
            hosts,
            command,
            printer,
            progress_after=1e9,
            at_once=FleetSettings().max_hosts_at_once,
        )
    t1, cpu1 = time.perf_counter(), time.process_time()
    if code != 0 or printer.lines != expect:
        raise RuntimeError(f"grep over {len(hosts)} hosts: exit {code}, {printer.lines} lines")
    first = (printer.first or t1) - t0
    return {"first": first, "last": t1 - t0, "cpu_per_host": (cpu1 - cpu0) / len(hosts)}


def median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def matching(log: Path) -> int:
    return sum(PATTERN in line for line in log.read_text().splitlines())


async def measure(workers: list[Worker], log: Path, n: int, cold: int, warm: int) -> dict[str, Any]:
    hosts = [
        host(w, f"w{i:03d}", connect_timeout=60, request_timeout=120)
        for i, w in enumerate(workers[:n])
    ]
    command = line_for(Grep(str(log), PATTERN))
    expect = matching(log) * n
    cold_runs = []
    for _ in range(cold):
        async with Client(hosts) as client:
            cold_runs.append(await grep_once(client, hosts, command, expect))
    async with Client(hosts) as client:
        await grep_once(client, hosts, command, expect)
        warm_runs = [await grep_once(client, hosts, command, expect) for _ in range(warm)]
    per_conn = await rss_per_connection(workers[:n]) if n > 1 else None
    return {"n": n, "cold": cold_runs, "warm": warm_runs, "rss_per_conn": per_conn}


async def rss_per_connection(workers: list[Worker]) -> float:
    """In a fresh process (nothing freed earlier to reuse): RSS growth per connection
    with its bridge running and idle, beyond the first one."""
    spec = [[w.port, str(w.client_key), str(w.known_hosts)] for w in workers]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.fleet",
        "--probe-rss",
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    async with asyncio.timeout(RUN_TIMEOUT):
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the RSS probe exited {proc.returncode}")
    return float(out.decode().split()[-1])


async def probe_rss(spec: list[list[Any]]) -> float:
    hosts = [
        HostConfig(
            name=f"w{i:03d}",
            address="127.0.0.1",
            port=port,
            user=USER,
            key=Path(key),
            known_hosts=Path(known),
            connect_timeout=60,
        )
        for i, (port, key, known) in enumerate(spec)
    ]
    async with Client(hosts) as client, asyncio.timeout(RUN_TIMEOUT):
        # the first connection loads what every connection needs (modules, ciphers)
        await client.pool.get(hosts[0].name).bridge()
        gc.collect()
        before = rss()
        await asyncio.gather(*(client.pool.get(h.name).bridge() for h in hosts[1:]))
        gc.collect()
        assert client.pool.connected == len(hosts)
        return (rss() - before) / (len(hosts) - 1)


def kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f} KiB"


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def table(results: list[dict[str, Any]], args: argparse.Namespace, setup: float) -> str:
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    out = [
        f"One run of `python -m bench.fleet` on {cpu}, {os.cpu_count()} cores (load average"
        f" {load:.1f} at the end), loopback; every worker its own OpenSSH sshd with the gate"
        f" as forced command; {args.cold_runs} cold and {args.warm_runs} warm runs per size,"
        f" medians. Setting up the workers took {setup:.0f} s.",
        "",
        f"`grep --hosts` for `{PATTERN}` in each worker's app.log"
        f" ({results[0]['lines_per_host']} lines per host):",
        "",
        "| workers | cold: first line ms | cold: last ms | warm: first line ms | warm: last ms"
        " | CPU per host, cold ms | CPU per host, warm ms | RSS per idle connection |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {r['n']} | {fmt_ms(median(r['cold'], 'first'))}"
            f" | {fmt_ms(median(r['cold'], 'last'))}"
            f" | {fmt_ms(median(r['warm'], 'first'))} | {fmt_ms(median(r['warm'], 'last'))}"
            f" | {fmt_ms(median(r['cold'], 'cpu_per_host'))}"
            f" | {fmt_ms(median(r['warm'], 'cpu_per_host'))}"
            f" | {kib(r['rss_per_conn'])} |"
        )
    big = [r for r in results if r["n"] >= 8]
    warm_cpu = [median(r["warm"], "cpu_per_host") * 1e3 for r in big]
    first = max(median(r["warm"], "first") for r in results) * 1e3
    worst_rss = max(r["rss_per_conn"] for r in results if r["n"] >= 8) / 1024
    out += [
        "",
        f"Goals: CPU per host answered ≤ 2 ms warm and flat from 8 to 128 hosts:"
        f" {' / '.join(f'{c:.2f}' for c in warm_cpu)} ms;"
        f" first result ≤ 100 ms warm: {first:.1f} ms at worst;"
        f" under 1 MiB RSS per idle connection: {worst_rss:,.0f} KiB at worst (8+ hosts).",
        "",
        "CPU is this process's own (the client side: handshakes, decryption, framing,"
        " prefixing and neutralising lines); the workers' sshd and gates are other"
        " processes. Wall times include their work on the same two cores, which a real"
        " fleet spreads over its own machines.",
        "",
    ]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> str:
    sizes = [int(x) for x in args.sizes.split(",")]
    workers: list[Worker] = []
    t0 = time.perf_counter()
    shared = Path(tempfile.mkdtemp(prefix="logtorukun-bench-fleet-"))
    try:
        shared.chmod(0o755)  # one log path for every worker, as on a real fleet
        log = shared / "app.log"
        log.write_text(sample_app_log())
        log.chmod(0o644)
        for i in range(max(sizes)):
            w = Worker(name=f"fleet-{i}")
            workers.append(w)
            w.write_policy(w.default_policy().replace(str(w.root), str(shared)))
            w.start()
        setup = time.perf_counter() - t0
        print(f"bench.fleet: {len(workers)} workers up in {setup:.0f} s", file=sys.stderr)
        results = []
        for n in sizes:
            r = await measure(workers, log, n, args.cold_runs, args.warm_runs)
            r["lines_per_host"] = matching(log)
            results.append(r)
            print(
                f"bench.fleet: {n} workers: warm last {fmt_ms(median(r['warm'], 'last'))} ms",
                file=sys.stderr,
            )
        return table(results, args, setup)
    finally:
        for w in workers:
            w.destroy()
        shutil.rmtree(shared, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet")
    ap.add_argument("--sizes", default="1,8,32,128")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--warm-runs", type=int, default=7)
    ap.add_argument("--probe-rss", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_rss:
        print(asyncio.run(probe_rss(json.loads(args.probe_rss))))
        return 0
    t0 = time.perf_counter()
    text = asyncio.run(run(args))
    print(text)
    DOC.write_text(text)
    print(f"bench.fleet: {time.perf_counter() - t0:.0f} s; wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
