"""SQLite against PostgreSQL for the server's state, side by side in one run.

    .venv/bin/python -m bench.database [--appends 3000] [--requests 300]

- audit append rate: one store appending in a loop (1 writer), and two stores (two
  server instances) with two threads each (4 writers), on the SQLite file and on a
  PostgreSQL started for the run (tests/support/postgres.py: initdb in a temporary
  directory, `fsync=off` like the tests, so disk flushes are left out on both sides:
  SQLite runs WAL with synchronous=NORMAL, no fsync per commit either);
- `GET /api/hosts/web1/tail?lines=200` through a real `logtorukun serve` on each
  backend against one real sshd worker: p50 and p95, one client in sequence, the two
  servers' requests alternating in blocks.

Prints a table and writes docs/benchmarks-database.md. Needs root (sshd, PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.web import BenchServer, bench_server, bench_tail, stop_server
from logtorukun.audit.store import AuditStore
from logtorukun.db.postgres import close_pool
from tests.conftest import new_pg_database
from tests.support.postgres import Postgres
from tests.support.sshd import Worker

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-database.md"


def append_rate(where: str | Path, n: int, writers: int) -> float:
    """Appends per second with `writers` threads over two stores (one with 1 writer)."""
    stores = [AuditStore(where)] if writers == 1 else [AuditStore(where), AuditStore(where)]
    per = n // writers

    def run(store: AuditStore) -> None:
        for i in range(per):
            store.append("read", user="bench", host="web1", params={"i": i})

    try:
        threads = [
            threading.Thread(target=run, args=(stores[i % 2 if writers > 1 else 0],))
            for i in range(writers)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        elapsed = time.perf_counter() - t0
        assert stores[0].verify().ok
    finally:
        for s in stores:
            s.close()
    return per * writers / elapsed


def run(args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str, str]] = []
    pg = Postgres()
    w = Worker(name="bench-db")
    servers: dict[str, BenchServer] = {}
    with tempfile.TemporaryDirectory(prefix="logtorukun-bench-db-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            pg.start()
            w.start()
            lite_appends = tmp / "appends.db"
            pg_appends = new_pg_database(pg)
            for writers in (1, 4):
                lite = append_rate(lite_appends, args.appends, writers)
                post = append_rate(pg_appends, args.appends, writers)
                rows.append(
                    (
                        f"audit appends/s, {writers} writer{'s' if writers > 1 else ''}"
                        + ("" if writers == 1 else " on two stores"),
                        f"{lite:,.0f}",
                        f"{post:,.0f}",
                        f"{post / lite:.2f}x",
                    )
                )
            close_pool(pg_appends)
            for name, database in (("sqlite", str(tmp / "web.db")), ("pg", new_pg_database(pg))):
                d = tmp / name
                d.mkdir()
                s = servers[name] = bench_server(d, w, database=database)
                bench_tail(s.url, s.token, str(w.app_log), 30, 1)  # warm: connection, bridge
            times: dict[str, list[float]] = {"sqlite": [], "pg": []}
            block = max(1, args.requests // 10)
            for _ in range(10):
                for name, s in servers.items():
                    times[name] += bench_tail(s.url, s.token, str(w.app_log), block, 1)
            p50 = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            p95 = {k: sorted(v)[int(len(v) * 0.95)] * 1e3 for k, v in times.items()}
            rows.append(
                (
                    "HTTP `tail -n 200` p50 ms (audit start + end records)",
                    f"{p50['sqlite']:.2f}",
                    f"{p50['pg']:.2f}",
                    f"{p50['pg'] / p50['sqlite']:.2f}x",
                )
            )
            rows.append(
                (
                    "HTTP `tail -n 200` p95 ms",
                    f"{p95['sqlite']:.2f}",
                    f"{p95['pg']:.2f}",
                    f"{p95['pg'] / p95['sqlite']:.2f}x",
                )
            )
        finally:
            for s in servers.values():
                stop_server(s.proc)
            w.destroy()
            pg.destroy()
    out = [
        f"One run of `python -m bench.database`: {args.appends} appends per row,"
        f" {len(times['sqlite'])} HTTP requests per backend; PostgreSQL 15 on loopback"
        f" (fsync off), SQLite WAL synchronous=NORMAL; load average {os.getloadavg()[0]:.1f}"
        " at the end (a shared machine: compare the columns, not runs).",
        "",
        "| measure | SQLite | PostgreSQL | PostgreSQL / SQLite |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.database")
    ap.add_argument("--appends", type=int, default=3000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    t0 = time.perf_counter()
    text = run(args)
    print(text)
    DOC.write_text(text)
    print(f"bench.database: {time.perf_counter() - t0:.0f} s; wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
