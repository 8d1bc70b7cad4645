"""Streaming a whole 1 GiB log over SSH: the gate's `cat` against `/bin/cat` and `gzip -dc`.

    .venv/bin/python -m bench.stream [--size-mib 1024] [--rounds 3]

One real sshd worker runs the gate as forced command, with download-sized caps
(bench.client's policy: max_lines 10^9, max_bytes 10^11; a little under the 1 GiB file's
1.07 * 10^9 bytes, so the line cap could bind on them: the gate counts the first ~7%
of lines until it no longer can, then sends the rest uncounted, by sendfile one-shot
and by splice into frames in the bridge); a second sshd account on the same machine
has no forced command and runs the plain tools. Every method reads over a pooled
asyncssh connection of the same kind (aes128-gcm), in rounds that alternate the methods,
and the table gives the median MB/s (10^6 bytes) and the ratio to the plain tool. The
log (and its gzip -1) is generated once into bench/data/. Writes
docs/benchmarks-stream.md.

Where the time goes: for every method the table also gives the CPU seconds per GiB of
the command that produced the stream (the gate, or the plain tool), of sshd (reading
that command's pipe, encrypting) and of the client (this process: decrypting, reading),
from the worker's process tree in /proc. On 2 shared cores the throughput follows the
sum of these more than any one of them; they vary less with the load than MB/s does
(though a loaded machine inflates them too: compare rows of one run).
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


def tree_cpu(root: int) -> tuple[float, float]:
    """CPU seconds so far of sshd itself and of the commands it ran, in the process
    tree under `root` (a worker's sshd): a command that has ended is in its parent's
    cutime/cstime, a running one (a bridge) in its own utime/stime."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, list[int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = (comm, [int(x) for x in fields[11:15]])
    sshd = command = 0
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        comm, (utime, stime, cutime, cstime) = stats[pid]
        if comm.startswith("sshd"):
            sshd += utime + stime
            command += cutime + cstime
        else:
            command += utime + stime + cutime + cstime
    hz = os.sysconf("SC_CLK_TCK")
    return sshd / hz, command / hz


async def measure(
    fn: Callable[[], Awaitable[int]], size: int, root: int
) -> tuple[float, tuple[float, float, float]]:
    """MB/s, and CPU seconds per GiB of (command, sshd, client)."""
    sshd0, cmd0 = tree_cpu(root)
    cpu0 = time.process_time()
    t = time.perf_counter()
    n = await fn()
    dt = time.perf_counter() - t
    cpu1 = time.process_time()
    sshd1, cmd1 = tree_cpu(root)
    if n != size:
        raise SystemExit(f"short read: {n} of {size} bytes")
    gib = size / (1 << 30)
    return size / dt / 1e6, ((cmd1 - cmd0) / gib, (sshd1 - sshd0) / gib, (cpu1 - cpu0) / gib)


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
            cpus: dict[str, list[tuple[float, float, float]]] = {}
            for rnd in range(args.rounds):
                for _, methods in groups:
                    for name, fn in methods:
                        print(f"bench.stream: round {rnd + 1}: {name}", file=sys.stderr)
                        root = raw.pid if "no gate" in name else w.pid
                        assert root is not None
                        rate, cpu = await measure(fn, size, root)
                        results.setdefault(name, []).append(rate)
                        cpus.setdefault(name, []).append(cpu)
    finally:
        w.destroy()
        raw.destroy()
    out = [
        "# Streaming benchmark: the gate's `cat` against `/bin/cat` and `gzip -dc`",
        "",
        f"Command: `.venv/bin/python -m bench.stream` — {size:,} bytes ({args.size_mib} MiB), "
        f"median of {args.rounds} rounds; {os.cpu_count()} cores shared with other work "
        f"(load average {load:.1f} at the start), sshd and client on loopback, "
        f"pooled asyncssh connections (aes128-gcm); load average {os.getloadavg()[0]:.1f} "
        "at the end.",
        "",
        "CPU columns: seconds per GiB streamed (medians) of the command that produced the",
        "stream (the gate, or the plain tool), of sshd and of the client.",
        "",
        "| data | method | MB/s | vs the plain tool | command CPU | sshd CPU | client CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for data, methods in groups:
        base = statistics.median(results[methods[0][0]])
        for name, _ in methods:
            rate = statistics.median(results[name])
            med = [statistics.median(c[i] for c in cpus[name]) for i in range(3)]
            out.append(
                f"| {data} | {name} | {rate:,.0f} | {rate / base:.2f}x | "
                + " | ".join(f"{c:.2f}" for c in med)
                + " |"
            )
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
