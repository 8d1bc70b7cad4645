"""Four ways to ask a worker for a log, side by side, against one real sshd and one file.

    .venv/bin/python -m bench.client [--stream-mib 256] [--quick]

1. the original article's approach (docs/security.md): a fresh `ssh` process (and
   connection) per request;
2. OpenSSH ControlMaster: a fresh `ssh` process per request over one master connection;
3. one-shot gate over a pooled asyncssh connection: one channel + gate process per request;
4. the bridge: one channel and one gate process for everything, requests multiplexed.

Every row goes through the real gate (policy check, safe open, limits, and its audit
record written to a file on the worker) over a real OpenSSH sshd on loopback started with
sshd's stock `MaxSessions 10` and `MaxStartups 10:30:100`. Streaming compares the gate's
`cat` verb over the bridge and one-shot with plain `/bin/cat` over the same kind of
asyncssh connection to an unrestricted account (no gate at all). The log is generated
once into bench/data/ (ignored by git). Prints a markdown table and writes it to
docs/benchmarks-client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench._logs import make_log
from logtorukun.client import Client
from logtorukun.config import HostConfig
from tests.support.sshd import Worker

DATA = Path(__file__).parent / "data"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-client.md"
STOCK_SSHD = ["MaxSessions 10", "MaxStartups 10:30:100"]

Call = Callable[[], Awaitable[bytes]]


def policy(w: Worker, root: Path, name: str) -> str:
    return (
        "[limits]\nmax_lines = 1000000000\nmax_bytes = 100000000000\nmax_seconds = 600\n"
        f'follow_max_seconds = 600\nmax_concurrent = 8\nstate_dir = "{w.state_dir}"\n'
        f'[audit]\ndestination = "file"\npath = "{w.audit_path}"\n'
        f'[[files]]\nroot = "{root}"\npatterns = ["{name}"]\n'
    )


def host(
    w: Worker, name: str = "w", *, connect_timeout: float = 30, request_timeout: float = 600
) -> HostConfig:
    """The client's settings for a throwaway worker (timeouts for benchmark loads)."""
    return HostConfig(
        name=name,
        address=w.host,
        port=w.port,
        user=w.user,
        key=w.client_key,
        known_hosts=w.known_hosts,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
    )


# ---------------------------------------------------------------------- measuring


async def sequential(call: Call, n: int, expect: bytes) -> tuple[float, float, int]:
    """p50 and p95 in ms over n requests one after another, and the failures."""
    times = []
    failed = 0
    await call()  # warm: connection, bridge, page cache
    for _ in range(n):
        t = time.perf_counter()
        try:
            ok = await call() == expect
        except Exception:
            ok = False
        times.append(time.perf_counter() - t)
        failed += not ok
    times.sort()
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.95)] * 1e3, failed


async def concurrent(call: Call, in_flight: int, total: int, expect: bytes) -> tuple[float, int]:
    """Requests per second with `in_flight` requests outstanding, and the failures."""
    left = total
    failed = 0

    async def worker() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            try:
                ok = await call() == expect
            except Exception:
                ok = False
            failed += not ok

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - t), failed


async def ssh_process(argv: list[str]) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ssh exited {proc.returncode}")
    return out


async def ssh_stream(argv: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    n = 0
    while chunk := await proc.stdout.read(1 << 18):
        n += len(chunk)
    await proc.wait()
    return n


async def client_stream(client: Client, command: str) -> int:
    stream = await client.stream("w", command)
    n = 0
    async for chunk in stream:
        n += len(chunk)
    return n


async def timed_bytes(fn: Callable[[], Awaitable[int]], size: int, runs: int) -> float:
    """Best of `runs`, in MB/s (10^6 bytes); a short read counts as a failure (0)."""
    best = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        n = await fn()
        dt = time.perf_counter() - t
        best = max(best, n / dt / 1e6 if n == size else 0.0)
    return best


# ---------------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> str:
    stream_mib = args.stream_mib
    log = DATA / f"client-{stream_mib}m.log"
    print(f"bench.client: generating {log} if missing ...", file=sys.stderr, flush=True)
    make_log(log, stream_mib << 20)
    size = log.stat().st_size
    path = str(log)
    load = os.getloadavg()[0]
    expect_tail = b"".join(_last_lines(log, 200))

    w = Worker(name="bench-client", sshd_options=STOCK_SSHD)
    raw = Worker(name="bench-raw", command=None, key_options="", sshd_options=STOCK_SSHD)
    master: subprocess.Popen[bytes] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-client-"))
    try:
        w.write_policy(policy(w, log.parent, log.name))
        w.start()
        raw.start()
        sock = tmp / "cm.sock"
        master_log = open(tmp / "master.log", "wb")  # noqa: SIM115
        master = subprocess.Popen(
            _drop_command(
                w.ssh_argv(
                    "", options=["-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={sock}"]
                )
            ),
            stdin=subprocess.DEVNULL,
            stderr=master_log,
        )
        for _ in range(500):
            if sock.exists():
                break
            await asyncio.sleep(0.01)
        cm_opts = ["-o", "ControlMaster=no", "-o", f"ControlPath={sock}"]
        tail = f"tail -n 200 {path}"
        q = args.quick

        fresh: Call = lambda: ssh_process(w.ssh_argv(tail))  # noqa: E731
        cm: Call = lambda: ssh_process(w.ssh_argv(tail, options=cm_opts))  # noqa: E731
        async with (
            Client([host(w)], oneshot=True) as oneshot,
            Client([host(w)]) as bridge,
            Client([host(raw)], oneshot=True) as plain,
        ):
            one: Call = lambda: _data(oneshot.run("w", tail))  # noqa: E731
            br: Call = lambda: _data(bridge.run("w", tail))  # noqa: E731
            methods = [
                ("fresh `ssh` per request (the original article)", fresh, 10 if q else 30, 50, 500),
                ("ControlMaster `ssh` per request", cm, 30 if q else 100, 50, 500),
                ("one-shot gate, pooled asyncssh", one, 50 if q else 200, 500, 500),
                ("bridge (one gate session)", br, 500 if q else 3000, 5000, 20000),
            ]
            rows = []
            fallbacks = []
            for name, call, n_seq, total50, total500 in methods:
                print(f"bench.client: {name} ...", file=sys.stderr, flush=True)
                p50, p95, seq_failed = await sequential(call, n_seq, expect_tail)
                refused0 = _refused(tmp / "master.log")
                r50, f50 = await concurrent(call, 50, total50, expect_tail)
                refused50 = _refused(tmp / "master.log")
                r500, f500 = await concurrent(call, 500, total500, expect_tail)
                if call is cm:
                    fallbacks = [refused50 - refused0, _refused(tmp / "master.log") - refused50]
                rows.append(
                    (name, p50, p95, seq_failed, n_seq, r50, f50, total50, r500, f500, total500)
                )

            print("bench.client: streaming ...", file=sys.stderr, flush=True)
            runs = 1 if q else 3
            cat = f"cat {path}"
            streams = [
                ("bridge, gate `cat`", lambda: client_stream(bridge, cat)),
                ("one-shot gate `cat`, pooled asyncssh", lambda: client_stream(oneshot, cat)),
                ("plain `/bin/cat`, pooled asyncssh, no gate", lambda: client_stream(plain, cat)),
                ("fresh `ssh`, gate `cat` (OpenSSH client)", lambda: ssh_stream(w.ssh_argv(cat))),
            ]
            best = {name: 0.0 for name, _ in streams}
            for _ in range(runs):  # rounds, so a busy moment hurts every method alike
                for name, fn in streams:
                    best[name] = max(best[name], await timed_bytes(fn, size, 1))
            rates = list(best.items())
    finally:
        if master is not None:
            master.terminate()
            master.wait()
        w.destroy()
        raw.destroy()
        with contextlib.suppress(OSError):
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
    return report(rows, rates, size, stream_mib, fallbacks, load)


def _last_lines(path: Path, n: int) -> list[bytes]:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 200 * n))
        return f.read().splitlines(keepends=True)[-n:]


def _refused(log: Path) -> int:
    """Channels the ControlMaster asked for and sshd refused (MaxSessions)."""
    try:
        return log.read_bytes().count(b"open failed")
    except OSError:
        return 0


def _drop_command(argv: list[str]) -> list[str]:
    return argv[:-1]  # -N: the master runs no command


async def _data(reply: Awaitable[object]) -> bytes:
    r = await reply
    return r.data  # type: ignore[attr-defined, no-any-return]


def report(
    rows: list[tuple[str, float, float, int, int, float, int, int, float, int, int]],
    rates: list[tuple[str, float]],
    size: int,
    stream_mib: int,
    fallbacks: list[int],
    load: float,
) -> str:
    cpu = _cpu()
    out = [
        "# Client benchmark: fresh ssh vs ControlMaster vs one-shot gate vs bridge",
        "",
        f"One run of `python -m bench.client` on {cpu}, {os.cpu_count()} cores (shared: load "
        f"average {load:.1f} at the start), loopback, "
        f"OpenSSH sshd with stock `MaxSessions 10` / `MaxStartups 10:30:100`; asyncssh with "
        "aes128-gcm. Every request goes through the gate: parse, policy, safe open, limits, "
        "and an audit record written on the worker.",
        "",
        "`tail -n 200` of one log (about 20 KB per answer):",
        "",
        "| method | p50 ms | p95 ms | req/s, 50 in flight | failed | req/s, 500 in flight"
        " | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p50, p95, sf, ns, r50, f50, t50, r500, f500, t500 in rows:
        seq_fail = f" ({sf}/{ns} failed)" if sf else ""
        out.append(
            f"| {name} | {p50:.2f}{seq_fail} | {p95:.2f} | {r50:,.0f} | {f50}/{t50} | "
            f"{r500:,.0f} | {f500}/{t500} |"
        )
    base = next((r for n, r in rates if n.startswith("one-shot")), 0.0)
    out += [
        "",
        f"Streaming a {stream_mib} MiB log ({size:,} bytes; the issue asks for 1 GiB, "
        f"{stream_mib} MiB keeps the whole run under three minutes), best of the runs:",
        "",
        "| method | MB/s | vs one-shot gate `cat` |",
        "|---|---:|---:|",
    ]
    for name, rate in rates:
        ratio = f"{rate / base:.2f}x" if base else "-"
        out.append(f"| {name} | {rate:,.0f} | {ratio} |")
    bridge = rows[-1]
    br_rate = next((r for n, r in rates if n.startswith("bridge")), 0.0)
    out += [
        "",
        f"Goals of issue 3: bridge `tail -n 200` p50 at most 1 ms: {bridge[1]:.2f} ms; at least "
        f"5,000 req/s with 500 in flight and no failure: {bridge[8]:,.0f} req/s, {bridge[9]} "
        f"failed; streaming at least 0.9x `cat` over the same kind of connection: "
        f"{br_rate / base if base else 0:.2f}x the gate's own `cat` run one-shot. (Plain "
        "`/bin/cat` without a gate shows what SSH alone carries; the gate's per-line caps "
        "and counting are the difference, in one-shot and bridge alike.)",
    ]
    out += [
        "",
        'Notes: "failed" counts requests that errored or returned other bytes. '
        "Concurrency rows ran a fixed number of requests (the denominator) with that many "
        "outstanding at once. The fresh-ssh rows pay `MaxStartups`: sshd drops connections "
        "beyond 10 unauthenticated ones at random. The one-shot pool queues its channels "
        "below `MaxSessions` (8 at a time), so it waits instead of failing. ControlMaster has "
        "no such queue: sshd refused "
        + (
            f"{fallbacks[0]} (50 in flight) and {fallbacks[1]} (500 in flight) "
            if fallbacks
            else "some "
        )
        + "of its channels over `MaxSessions 10`, and OpenSSH's mux client then quietly "
        "opened a fresh connection of its own for each (so they count as successes, at "
        "fresh-connection cost and under `MaxStartups`).",
        "",
    ]
    return "\n".join(out)


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client")
    ap.add_argument("--stream-mib", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="fewer requests and runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = asyncio.run(run(args))
    print(table)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(table)
    print(f"bench.client: {time.perf_counter() - t0:.0f} s; wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
