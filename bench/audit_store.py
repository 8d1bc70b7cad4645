"""Audit store throughput: `python -m bench.audit_store` (or `python bench/audit_store.py`).

The web server appends a record before every response, so the append cost is part of
every request's latency; verify time says how long an auditor waits per 100k records.
Runs in a temporary directory in well under a minute and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from logtorukun.audit import AuditStore

FIELDS = {
    "user": "alice",
    "roles": ["ops"],
    "client": "192.0.2.10",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) logtorukun-bench",
    "action": "tail",
    "host": "web1",
    "source": "/var/log/worker/app.log",
    "decision": "allow",
}


def _append(store: AuditStore, i: int) -> None:
    store.append("read", params={"lines": 200, "i": i}, **FIELDS)  # type: ignore[arg-type]


def bench_single(store: AuditStore, n: int, budget: float) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + budget
    i = 0
    while i < n and time.perf_counter() < deadline:
        t = time.perf_counter()
        _append(store, i)
        latencies.append(time.perf_counter() - t)
        i += 1
    return i, time.perf_counter() - start, latencies


def bench_threads(store: AuditStore, threads: int, per_thread: int) -> tuple[int, float]:
    def work(k: int) -> None:
        for i in range(per_thread):
            _append(store, k * per_thread + i)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * per_thread, time.perf_counter() - start


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--records", type=int, default=100_000, help="size for the verify run")
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, note: str = "") -> None:
        rows.append((name, value, note))
        print(f"  {name}: {value} {note}", flush=True)

    print("audit store benchmark (SQLite WAL, synchronous=NORMAL unless noted)", flush=True)
    with tempfile.TemporaryDirectory(prefix="logtorukun-bench-") as tmp:
        db = Path(tmp) / "audit.db"
        with AuditStore(db) as store:
            n, secs, lat = bench_single(store, 20_000, budget=10.0)
            lat.sort()
            row(
                "append, 1 thread",
                f"{n / secs:,.0f} /s",
                f"p50 {_us(statistics.median(lat))}, p99 {_us(lat[int(len(lat) * 0.99)])}, "
                f"p99.9 {_us(lat[int(len(lat) * 0.999)])}, max {_us(lat[-1])} (WAL checkpoints)",
            )
            n4, secs4 = bench_threads(store, 4, 5_000)
            row("append, 4 threads", f"{n4 / secs4:,.0f} /s", "one store, one chain")

            have = n + n4
            fill_start = time.perf_counter()
            while have < args.records:
                _append(store, have)
                have += 1
            filled = time.perf_counter() - fill_start
            report = store.verify()
            assert report.ok and report.records == have, report.summary()
            row(
                "verify per 100k records",
                f"{report.seconds * 100_000 / have:.2f} s",
                f"{have:,} records in {report.seconds:.2f} s",
            )
            if filled > 0:
                row("append at ~100k records", f"{(have - n - n4) / filled:,.0f} /s", "")
            size = sum(p.stat().st_size for p in Path(tmp).glob("audit.db*"))
            row("disk per record", f"{size / have:,.0f} B", "database + WAL")

        durable_db = Path(tmp) / "durable.db"
        with AuditStore(durable_db, durable=True) as store:
            n, secs, lat = bench_single(store, 5_000, budget=3.0)
            lat.sort()
            row(
                "append, 1 thread, durable=True",
                f"{n / secs:,.0f} /s",
                f"synchronous=FULL; p50 {_us(statistics.median(lat))}",
            )

    print()
    _table(rows)
    return 0


def _table(rows: list[tuple[str, str, str]], out: Callable[[str], None] = print) -> None:
    out("| audit store | result | note |")
    out("|---|---:|---|")
    for name, value, note in rows:
        out(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    raise SystemExit(main())
