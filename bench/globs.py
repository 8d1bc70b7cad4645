"""Adversarial globs: the matcher alone, and /healthz of a real server under that load.

    .venv/bin/python -m bench.globs [--seconds 20] [--attackers 4]

Rows:
- One match of an adversarial glob against a 30-character name: the backtracking
  regex the web server used before (`re`, same pattern, same text) and the linear
  matcher (`gate/globs.py`), side by side in one run; the regex case is kept small
  enough to finish (it grows as n^k: at 63 characters it takes minutes).
- `GET /healthz` latency (p50, p99, max) of a real `logtorukun serve`, quiet and then
  while `--attackers` processes send `/api/search` with adversarial `hosts=`/`path=`
  globs as fast as they get answers (users with and without grants, a 63-character
  host name), and how many attack requests the server answered.

Prints a table. Needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from bench._stats import pct
from logtorukun.gate.globs import compile_glob
from tests.support.sshd import Worker
from tests.web.support import served

EVIL = "*a" * 8 + "*b"  # 9 wildcards: under the cap of 16
TEXT = "a" * 30

ATTACKER = textwrap.dedent(
    """
    import sys, time, httpx
    url, token, hosts, path, seconds = sys.argv[1:6]
    n = 0
    end = time.monotonic() + float(seconds)
    with httpx.Client(base_url=url, timeout=60,
                      headers={"authorization": "Bearer " + token}) as c:
        while time.monotonic() < end:
            c.get("/api/search", params={"hosts": hosts, "path": path, "pattern": "x"})
            n += 1
    print(n)
    """
)


def old_regex(pattern: str) -> re.Pattern[str]:
    """What the web server compiled before (`*` -> `[^/]*`, `**` -> `.*`)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def timed(fn: object, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def healthz(url: str, seconds: float) -> list[float]:
    lat = []
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as c:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            c.get("/healthz")
            lat.append(time.perf_counter() - t0)
            time.sleep(0.01)
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.globs")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--attackers", type=int, default=4)
    args = ap.parse_args()

    rx, glob = old_regex(EVIL), compile_glob(EVIL)
    t_re = timed(lambda: rx.fullmatch(TEXT), 3)
    t_glob = timed(lambda: glob.match(TEXT), 200)
    rows = [
        (f"`{EVIL}` vs 30 x 'a', backtracking re", f"{t_re * 1000:.1f} ms", ""),
        (
            f"`{EVIL}` vs 30 x 'a', linear matcher",
            f"{t_glob * 1e6:.1f} µs",
            f"{t_re / t_glob:,.0f}x faster",
        ),
    ]

    w = Worker(name="bench-globs")
    tmp = Path(tempfile.mkdtemp(prefix="logtorukun-bench-globs-"))
    try:
        w.start()
        long_host = "a" * 63
        extra = "\n".join(
            [
                "[[host]]",
                f'name = "{long_host}"',
                'address = "127.0.0.1"',
                f"port = {w.port}",
                f'user = "{w.user}"',
                f'key = "{w.client_key}"',
                f'known_hosts = "{w.known_hosts}"',
                'labels = ["web"]',
            ]
        )
        users = {"olivia": ["ops"], "nobody": ["nothing"]}
        with served(tmp, w, users, extra=extra) as srv:
            quiet = healthz(srv.url, min(5.0, args.seconds / 2))
            evil_hosts = ",".join(["**" * 7 + "b", "*a" * 15 + "*b"])
            plans = [
                ("olivia", evil_hosts, "/x"),
                ("nobody", evil_hosts, "/" + "**" * 7 + "b"),
                ("olivia", "web1", "/" + "**" * 7 + "b"),
            ]
            procs = [
                subprocess.Popen(
                    [
                        *(sys.executable, "-c", ATTACKER, srv.url),
                        srv.tokens[u],
                        h,
                        p,
                        str(args.seconds),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for u, h, p in (plans[i % len(plans)] for i in range(args.attackers))
            ]
            loaded = healthz(srv.url, args.seconds)
            answered = sum(int(p.communicate(timeout=120)[0] or 0) for p in procs)
        for name, lat in (("quiet", quiet), (f"{args.attackers} attackers", loaded)):
            rows.append(
                (
                    f"/healthz, {name}: p50 / p99 / max",
                    f"{pct(lat, 50) * 1000:.1f} / {pct(lat, 99) * 1000:.1f} / "
                    f"{max(lat) * 1000:.1f} ms",
                    f"{len(lat)} polls",
                )
            )
        rows.append(
            (
                "adversarial searches answered",
                f"{answered / args.seconds:.0f}/s",
                f"{answered} in {args.seconds:g} s",
            )
        )
    finally:
        w.destroy()
    print("| measurement | value | |")
    print("|---|---:|---:|")
    for a, b, c in rows:
        print(f"| {a} | {b} | {c} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
