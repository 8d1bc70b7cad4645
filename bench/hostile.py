"""A normal reader's latency while 20 hostile requests at a time hit the same worker.

    .venv/bin/python -m bench.hostile [--seconds 20] [--requests 300]

One real sshd worker with the default limits (max_memory 512 MiB, max_seconds 30,
max_concurrent 8, session_buffer 32 MiB). The normal reader is one bridge session doing
`tail -n 200` of an 800-line log, one request at a time. It is measured twice in the
same run: alone, then while 20 threads keep hostile requests going, each class of
tests/gate/test_hostile.py in turn: a grep that outgrows max_memory, a 128 MiB line
from a small .gz (cat, tail), seconds of inflating (tail, range, grep of a 1 GiB .gz),
a nested-repetition regex, a 100 KB command, and bridge sessions that leave 150
`tail -n 10000` answers unread and send malformed frames. Prints p50/p99 of the
normal reader with and without the load and the peak RSS of all gate processes
(sampled every 5 ms); the table goes into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

from logtorukun.gate.protocol import REQUEST
from tests.gate.test_bridge import BridgeClient
from tests.gate.test_hostile import MIB, Hostile
from tests.support.peak import PeakRss

HOSTILE_THREADS = 20


def hostile_actions(w: Hostile) -> list[Callable[[], None]]:
    root = w.root

    def one_shot(command: str) -> Callable[[], None]:
        def run() -> None:
            w.ssh(command, timeout=120)

        return run

    def unread_session() -> None:
        s = BridgeClient(w.ssh_argv("bridge"))
        for rid in range(1, 151):
            s.request(rid, f"tail -n 10000 {root}/wide.log")
        for rid, payload in enumerate([b"[" * 15000, b"not json", b"{}"], 1000):
            s.send(REQUEST, rid, payload)
        s.result(1002, timeout=120)
        s.close()  # the 150 unread answers are cancelled with the session

    return [
        one_shot(f"grep -c x {root}/bomb.log.gz"),
        one_shot(f"cat {root}/bomb.log.gz"),
        one_shot(f"tail -n 5 {root}/bomb.log.gz"),
        one_shot(f"tail -n 5 {root}/slow.log.gz"),
        one_shot(f"range --since 2024-12-16 {root}/slow.log.gz"),
        one_shot(f"grep -c zzz {root}/slow.log.gz"),
        one_shot(f"grep -E '((a{{255}}){{255}}){{255}}' {root}/app.log"),
        one_shot(f"tail -n 5 {root}/app.log " + "\x01\\" * 50_000),
        one_shot(f"cat {root}/long.log"),
        unread_session,
    ]


def measure(s: BridgeClient, path: str, n: int, start: int) -> list[float]:
    lat = []
    for rid in range(start, start + n):
        t0 = time.perf_counter()
        data, end = s.call(rid, f"tail -n 200 {path}")
        lat.append(time.perf_counter() - t0)
        assert end["exit"] == 0 and data.count(b"\n") == 200, end
    return lat


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="normal requests per phase")
    args = ap.parse_args()
    w = Hostile(name="bench-hostile")
    try:
        w.plant()
        w.write_policy(w.hostile_policy(max_seconds=30, max_memory=512 * MIB))
        w.start()
        assert w.pid is not None
        s = BridgeClient(w.ssh_argv("bridge"))
        measure(s, str(w.app_log), 20, 1)  # warm-up
        quiet = measure(s, str(w.app_log), args.requests, 100)
        stop = threading.Event()
        actions = hostile_actions(w)
        done = [0]

        def attacker(k: int) -> None:
            i = k
            while not stop.is_set():
                actions[i % len(actions)]()
                done[0] += 1
                i += 1

        threads = [threading.Thread(target=attacker, args=(k,)) for k in range(HOSTILE_THREADS)]
        with PeakRss(w.pid) as peak:
            for t in threads:
                t.start()
            time.sleep(3)  # let the attacks reach their steady state
            loaded = measure(s, str(w.app_log), args.requests, 10_000)
            stop.set()
            for t in threads:
                t.join()
        code, err = s.close()
        assert (code, err) == (0, b""), (code, err)
    finally:
        w.destroy()
    print(f"normal reader: `tail -n 200` over one bridge session, {args.requests} requests")
    print(f"per phase; {HOSTILE_THREADS} hostile clients, {done[0]} hostile requests run\n")
    print("| phase | p50 | p99 | max | peak RSS, all gate processes |")
    print("|---|---|---|---|---|")
    print(
        f"| alone | {pct(quiet, 50):.1f} ms | {pct(quiet, 99):.1f} ms |"
        f" {max(quiet) * 1000:.1f} ms | |"
    )
    print(
        f"| with {HOSTILE_THREADS} hostile requests at a time | {pct(loaded, 50):.1f} ms |"
        f" {pct(loaded, 99):.1f} ms | {max(loaded) * 1000:.1f} ms | {peak.mib:.0f} MiB |"
    )
    ratio = statistics.median(loaded) / statistics.median(quiet)
    print(f"\nmedian ratio loaded/alone: {ratio:.1f}x")
    ok = pct(loaded, 99) < 50 and peak.bytes < 1024 * MIB
    print(f"goals (p99 < 50 ms, gate RSS < 1 GiB): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
