"""SIEM forwarder throughput against a real local rsyslog, next to the audit store's own
append rate: `python -m bench.forward`.

Goal (#13): the forwarder delivers at least as fast as the store appends, so a burst of
requests never leaves the SIEM further behind than the burst itself. Measured in one
run, side by side: the store's append rate alone; the forwarder draining a prefilled
store over plain TCP and over TLS (rsyslog writing every record to a file); and the
append rate while the forwarder runs (it must not slow the writer). Prints a table and
writes docs/benchmarks-forward.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.audit_store import FIELDS
from logtorukun.audit import AuditStore
from logtorukun.audit.forward import Forwarder
from logtorukun.config_siem import ForwardConfig
from tests.support.rsyslog import Collector

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-forward.md"
RECORDS = 30_000
ROUNDS = 3


def fill(store: AuditStore, n: int) -> float:
    """Appends per second for n records."""
    start = time.perf_counter()
    for i in range(n):
        store.append("read", params={"lines": 200, "i": i}, **FIELDS)  # type: ignore[arg-type]
    return n / (time.perf_counter() - start)


def drain(tmp: Path, db: Path, collector: Collector, batch: int, n: int) -> float:
    """Records per second confirmed by rsyslog, from position 0 to n."""
    state = tmp / f"state-{time.monotonic_ns()}.json"
    cfg = ForwardConfig(
        name="bench", url=collector.url, state=state, ca_file=collector.cert, batch=batch
    )
    fwd = Forwarder(db, cfg)
    start = time.perf_counter()
    try:
        while fwd.position.seq < n:
            fwd.run_once()
    finally:
        fwd.stop()
    return n / (time.perf_counter() - start)


def main() -> int:
    argparse.ArgumentParser(prog="bench.forward", description=__doc__.split("\n\n")[0]).parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="logtorukun-bench-") as tmp_s:
        tmp = Path(tmp_s)
        db = tmp / "audit.db"
        store = AuditStore(db)
        appends = [fill(store, RECORDS // ROUNDS) for _ in range(ROUNDS)]
        append_rate = statistics.median(appends)
        rows.append(("audit store append, 1 thread", f"{append_rate:,.0f} /s", "the baseline"))
        print(f"  append: {append_rate:,.0f}/s", flush=True)
        n = RECORDS
        for tls in (False, True):
            collector = Collector(tmp / f"rsyslog-{'tls' if tls else 'tcp'}", tls=tls)
            collector.start()
            try:
                for batch in (100, 500, 2000):
                    rates = [drain(tmp, db, collector, batch, n) for _ in range(ROUNDS)]
                    rate = statistics.median(rates)
                    scheme = "syslog+tls" if tls else "syslog+tcp"
                    rows.append(
                        (
                            f"forwarder to rsyslog, {scheme}, batch {batch}",
                            f"{rate:,.0f} /s",
                            f"{rate / append_rate:.2f}x the append rate",
                        )
                    )
                    print(f"  {scheme} batch {batch}: {rate:,.0f}/s", flush=True)
            finally:
                collector.stop()
        # The writer while a forwarder runs flat out against rsyslog.
        collector = Collector(tmp / "rsyslog-live")
        collector.start()
        cfg = ForwardConfig(name="live", url=collector.url, state=tmp / "live.json", batch=500)
        fwd = Forwarder(db, cfg)
        store.sinks.append(fwd)
        fwd.start()
        try:
            during = statistics.median(fill(store, RECORDS // ROUNDS) for _ in range(ROUNDS))
        finally:
            fwd.stop()
            store.sinks.remove(fwd)
            collector.stop()
        rows.append(
            (
                "audit store append while forwarding",
                f"{during:,.0f} /s",
                f"{during / append_rate:.2f}x the rate without (2 shared cores)",
            )
        )
        store.close()
    lines = [
        "Records as the web server writes them (a `read` with user, roles, client, user"
        f" agent, host, source); {RECORDS:,} records per drain, median of {ROUNDS} runs.",
        "",
        "| measurement | value | note |",
        "|---|---:|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    print("\n".join(lines))
    DOC.write_text(
        "# Benchmark: SIEM forwarder (`python -m bench.forward`)\n\n" + "\n".join(lines) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
