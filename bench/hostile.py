"""A normal reader's latency while 20 hostile requests at a time hit the same worker.

    .venv/bin/python -m bench.hostile [--requests 300] [--rounds 1]

One real sshd worker with the default limits (max_memory 256 MiB, max_total_memory
512 MiB, max_seconds 30, max_concurrent 8, session_buffer 8 MiB). The normal reader is
one bridge session doing `tail -n 200` of an 800-line log, one request at a time. It is
measured alone, then while 20 threads keep hostile requests going, each class of
tests/gate/test_hostile.py in turn: a grep that outgrows max_memory, a 128 MiB line
from a small .gz (cat, tail), seconds of inflating (tail, range, grep of a 1 GiB .gz),
a nested-repetition regex, a 100 KB command, and bridge sessions that leave 150
`tail -n 10000` answers unread and send malformed frames.

The attackers run in their own process and session (`--attack`, started by the bench):
they stand for other clients, and sharing the bench's interpreter would make the normal
reader wait for their frame parsing (the GIL), or with autogroup scheduling share one
CPU share with its ssh client: the bench measuring itself. Their ssh clients still share
the machine's two cores with the worker, at normal priority, as they would not in a
real deployment (they run on the web server). The RSS sampler has its own process too.

Prints per phase p50/p99/max of the normal reader, the part of it spent inside the gate
(the `duration_ms` of its audit records), the peak RSS of all gate processes (sampled
every 5 ms) with what it was made of, and the load average; the table goes into
docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench._stats import pct
from logtorukun.gate.policy import Limits
from logtorukun.gate.protocol import REQUEST
from tests.gate.test_bridge import BridgeClient
from tests.gate.test_hostile import MIB, Hostile
from tests.support.peak import PeakRss

HOSTILE_THREADS = 20


def hostile_actions(ssh: list[str], root: str) -> list[Callable[[], None]]:
    """Each class of tests/gate/test_hostile.py as one action; `ssh` is the client's
    argv without the command."""

    def one_shot(command: str) -> Callable[[], None]:
        def run() -> None:
            subprocess.run(
                [*ssh, command],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                start_new_session=True,  # each client its own session, as from many machines
            )

        return run

    def unread_session() -> None:
        s = BridgeClient([*ssh, "bridge"])
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


def attack(spec: dict[str, Any]) -> int:
    """The attackers' process: HOSTILE_THREADS threads until stdin closes, then the
    number of hostile requests completed on stdout."""
    actions = hostile_actions(spec["ssh"], spec["root"])
    stop = threading.Event()
    done = [0]

    def attacker(k: int) -> None:
        i = k
        while not stop.is_set():
            actions[i % len(actions)]()
            done[0] += 1
            i += 1

    threads = [threading.Thread(target=attacker, args=(k,)) for k in range(HOSTILE_THREADS)]
    for t in threads:
        t.start()
    sys.stdin.buffer.read()  # the bench closes our stdin to stop us
    stop.set()
    for t in threads:
        t.join()
    print(done[0], flush=True)
    return 0


def sample(root: int) -> int:
    """The RSS sampler's process (its /proc walks every 5 ms would otherwise hold the
    bench's GIL): samples until stdin closes, then the peak as JSON on stdout."""
    with PeakRss(root) as peak:
        sys.stdin.buffer.read()
    print(json.dumps({"bytes": peak.bytes, "at_peak": peak.at_peak}), flush=True)
    return 0


def measure(s: BridgeClient, path: str, n: int, start: int) -> list[float]:
    lat = []
    for rid in range(start, start + n):
        t0 = time.perf_counter()
        s.request(rid, f"tail -n 200 {path}", via={"bench": rid})
        data, end = s.result(rid)
        lat.append(time.perf_counter() - t0)
        assert end["exit"] == 0 and data.count(b"\n") == 200, end
    return lat


def gate_times(w: Hostile, first: int, n: int) -> list[float]:
    """Seconds each normal request spent in the gate's `serve`, from its audit records."""
    records = w.audit_records()
    ids = {
        r["id"]
        for r in records
        if r.get("decision") == "allow"
        and first <= (r.get("via") or {}).get("bench", -1) < first + n
    }
    return [r["duration_ms"] / 1000 for r in records if r.get("event") == "end" and r["id"] in ids]


def row(name: str, lat: list[float], gate: list[float], peak: str = "") -> str:
    return (
        f"| {name} | {pct(lat, 50) * 1000:.1f} ms | {pct(lat, 99) * 1000:.1f} ms"
        f" | {max(lat) * 1000:.1f} ms"
        f" | {pct(gate, 50) * 1000:.2f} / {pct(gate, 99) * 1000:.2f} ms | {peak} |"
    )


def one_round(w: Hostile, s: BridgeClient, n: int, base: int) -> list[str]:
    assert w.pid is not None
    path = str(w.app_log)
    load0 = os.getloadavg()[0]
    quiet = measure(s, path, n, base)
    spec = {"ssh": w.ssh_argv("X")[:-1], "root": str(w.root)}
    me = [sys.executable, "-m", "bench.hostile"]
    pipes: dict[str, Any] = {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "start_new_session": True,
    }
    sampler = subprocess.Popen([*me, "--sample", str(w.pid)], **pipes)
    attackers = subprocess.Popen([*me, "--attack", json.dumps(spec)], **pipes)
    time.sleep(3)  # let the attacks reach their steady state
    loaded = measure(s, path, n, base + n)
    load1 = os.getloadavg()[0]
    out, _ = attackers.communicate(b"", timeout=300)
    peak = json.loads(sampler.communicate(b"", timeout=60)[0])
    by_size = sorted(peak["at_peak"].items(), key=lambda x: -x[1])
    parts = ", ".join(f"{name} {size / MIB:.0f}" for name, size in by_size)
    return [
        row("alone", quiet, gate_times(w, base, n)),
        row(
            f"with {HOSTILE_THREADS} hostile requests at a time",
            loaded,
            gate_times(w, base + n, n),
            f"{peak['bytes'] / MIB:.0f} MiB ({parts})",
        ),
        f"hostile requests completed: {out.decode().strip()}; load average (1 min)"
        f" {load0:.1f} before, {load1:.1f} at the end of the loaded phase",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="normal requests per phase")
    ap.add_argument("--rounds", type=int, default=1, help="alone + loaded, this many times")
    ap.add_argument("--attack", help=argparse.SUPPRESS)
    ap.add_argument("--sample", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack:
        return attack(json.loads(args.attack))
    if args.sample:
        return sample(args.sample)
    w = Hostile(name="bench-hostile")
    lines: list[str] = []
    try:
        w.plant()
        # hostile_policy is the tests' (max_seconds 3, max_memory 64 MiB): put back the
        # defaults of the gate's Limits
        d = Limits()
        w.write_policy(w.hostile_policy(max_seconds=d.max_seconds, max_memory=d.max_memory))
        w.start()
        s = BridgeClient(w.ssh_argv("bridge"))
        measure(s, str(w.app_log), 20, 1)  # warm-up
        for k in range(args.rounds):
            lines += one_round(w, s, args.requests, 100 + k * 2 * args.requests)
        code, err = s.close()
        assert (code, err) == (0, b""), (code, err)
    finally:
        w.destroy()
    print(f"normal reader: `tail -n 200` over one bridge session, {args.requests} requests")
    print(f"per phase; {HOSTILE_THREADS} hostile clients\n")
    print("| phase | p50 | p99 | max | in the gate, p50 / p99 | peak RSS, all gate processes |")
    print("|---|---|---|---|---|---|")
    for line in lines:
        if line.startswith("|"):
            print(line)
    print()
    for line in lines:
        if not line.startswith("|"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
