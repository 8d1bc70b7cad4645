"""Streaming a whole 1 GiB log over SSH: the gate's `cat` against `/bin/cat` and `gzip -dc`.

    .venv/bin/python -m bench.stream [--size-mib 1024] [--rounds 3]

One real sshd worker runs the gate as forced command (policy caps far above the file,
so no cap can bind: one-shot `cat` goes by sendfile, the bridge streams without
counting lines); a second sshd account on the same machine has no forced command and
runs the plain tools. Every method reads over a pooled asyncssh connection of the same
kind (aes128-gcm), in rounds that alternate the methods, and the table gives the median
MB/s (10^6 bytes) and the ratio to the plain tool. The log (and its gzip -1) is
generated once into bench/data/. Writes docs/benchmarks-stream.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench._logs import make_log
from bench.client import STOCK_SSHD, client_stream, host, policy
from logtorukun.client import Client
from tests.support.sshd import Worker

DATA = Path(__file__).parent / "data"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-stream.md"


def gzip_of(log: Path) -> Path:
    gz = log.with_name(log.name + ".gz")
    if not gz.exists() or gz.stat().st_mtime < log.stat().st_mtime:
        tmp = gz.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            subprocess.run(["gzip", "-1", "-c", str(log)], stdout=f, check=True)
        tmp.chmod(0o644)
        tmp.rename(gz)
    return gz


async def measure(fn: Callable[[], Awaitable[int]], size: int) -> float:
    t = time.perf_counter()
    n = await fn()
    dt = time.perf_counter() - t
    if n != size:
        raise SystemExit(f"short read: {n} of {size} bytes")
    return size / dt / 1e6


async def run(args: argparse.Namespace) -> str:
    log = DATA / f"stream-{args.size_mib}m.log"
    print(f"bench.stream: generating {log} and its .gz if missing ...", file=sys.stderr)
    make_log(log, args.size_mib << 20)
    gz = gzip_of(log)
    size = log.stat().st_size
    load = os.getloadavg()[0]
    w = Worker(name="bench-stream", sshd_options=STOCK_SSHD)
    raw = Worker(name="bench-stream-raw", command=None, key_options="", sshd_options=STOCK_SSHD)
    try:
        w.write_policy(policy(w, log.parent, log.name + "*"))
        w.start()
        raw.start()
        async with (
            Client([host(w)]) as bridge,
            Client([host(w)], oneshot=True) as oneshot,
            Client([host(raw)], oneshot=True) as plain,
        ):
            cat, zcat = f"cat {log}", f"cat {gz}"
            groups = [
                (
                    "plain file",
                    [
                        ("`/bin/cat` (no gate)", lambda: client_stream(plain, cat)),
                        ("gate `cat`, one-shot", lambda: client_stream(oneshot, cat)),
                        ("gate `cat`, bridge", lambda: client_stream(bridge, cat)),
                    ],
                ),
                (
                    "gzip -1 of it",
                    [
                        ("`gzip -dc` (no gate)", lambda: client_stream(plain, f"gzip -dc {gz}")),
                        ("gate `cat` of the .gz, one-shot", lambda: client_stream(oneshot, zcat)),
                        ("gate `cat` of the .gz, bridge", lambda: client_stream(bridge, zcat)),
                    ],
                ),
            ]
            results: dict[str, list[float]] = {}
            for rnd in range(args.rounds):
                for _, methods in groups:
                    for name, fn in methods:
                        print(f"bench.stream: round {rnd + 1}: {name}", file=sys.stderr)
                        results.setdefault(name, []).append(await measure(fn, size))
    finally:
        w.destroy()
        raw.destroy()
    out = [
        "# Streaming benchmark: the gate's `cat` against `/bin/cat` and `gzip -dc`",
        "",
        f"Command: `.venv/bin/python -m bench.stream` — {size:,} bytes ({args.size_mib} MiB), "
        f"median of {args.rounds} rounds; {os.cpu_count()} cores shared with other work "
        f"(load average {load:.1f} at the start), sshd and client on loopback, "
        "pooled asyncssh connections (aes128-gcm).",
        "",
        "| data | method | MB/s | vs the plain tool |",
        "|---|---|---:|---:|",
    ]
    for data, methods in groups:
        base = statistics.median(results[methods[0][0]])
        for name, _ in methods:
            rate = statistics.median(results[name])
            out.append(f"| {data} | {name} | {rate:,.0f} | {rate / base:.2f}x |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    text = asyncio.run(run(args))
    print(text)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
