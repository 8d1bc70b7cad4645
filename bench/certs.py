"""What short-lived certificates cost: `python -m bench.certs`.

Against one real sshd that accepts both the long-lived key (authorized_keys) and
certificates of the user CA (TrustedUserCAKeys + an AuthorizedPrincipalsFile line with
the gate as command=), side by side in one run:

1. signing one certificate in process (asyncssh, a new ed25519 key each time) and through
   ssh-agent (`ssh-keygen -U`, the CA key never on disk);
2. a new connection up to a running bridge, with the key and with a certificate (what a
   person's first request to a worker, or a renewal, costs);
3. a warm `tail -n 200` through the bridge over each kind of connection (goal: no
   difference once the connection is up).

Prints a table and writes docs/benchmarks-certs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._stats import ms
from logtorukun.client import Client, PoolOptions
from logtorukun.client.certs import CertPolicy, CertSigner
from logtorukun.ops.local_worker import HOST
from tests.client.helpers import host_for
from tests.support.certs import make_ca, principals_line
from tests.support.sshd import USER, Worker

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-certs.md"
SIGNS, AGENT_SIGNS, CONNECTS, TAILS, ROUNDS = 300, 30, 20, 400, 3


def bench_signing(ca: Path) -> tuple[float, float]:
    signer = CertSigner(ca / "user_ca")
    times = []
    for i in range(SIGNS):
        t = time.perf_counter()
        signer.sign(f"user{i}", USER, force_command="/bin/true", source_address=["10.0.0.2"])
        times.append(time.perf_counter() - t)
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(
        line.split(";")[0].split("=", 1) for line in agent.stdout.splitlines() if "=" in line
    )
    old = os.environ.get("SSH_AUTH_SOCK")
    os.environ["SSH_AUTH_SOCK"] = env["SSH_AUTH_SOCK"]
    try:
        subprocess.run(["ssh-add", "-q", str(ca / "user_ca")], check=True, env=os.environ)
        via_agent = CertSigner(ca / "user_ca.pub", agent=True)
        agent_times = []
        for i in range(AGENT_SIGNS):
            t = time.perf_counter()
            via_agent.sign(f"user{i}", USER, force_command="/bin/true")
            agent_times.append(time.perf_counter() - t)
    finally:
        subprocess.run(["kill", env["SSH_AGENT_PID"]], check=False)
        if old is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = old
    return statistics.median(times), statistics.median(agent_times)


async def bench_connect(worker: Worker, policy: CertPolicy | None) -> float:
    """Median time from nothing to a running bridge (one connection each time)."""
    host = host_for(worker, gate_command=worker.gate_command())
    times = []
    for i in range(CONNECTS):
        async with Client([host], options=PoolOptions(certs=policy)) as client:
            t = time.perf_counter()
            await client.pool.get("w", f"u{i}").bridge()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


async def bench_tail(worker: Worker, policy: CertPolicy | None) -> float:
    host = host_for(worker, gate_command=worker.gate_command())
    cmd = f"tail -n 200 {worker.app_log}"
    async with Client([host], options=PoolOptions(certs=policy)) as client:
        via = {"user": "olivia"}
        await client.run("w", cmd, via=via)  # connect and warm up
        times = []
        for _ in range(TAILS):
            t = time.perf_counter()
            await client.run("w", cmd, via=via)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


async def run(worker: Worker, ca: Path) -> list[tuple[str, str, str]]:
    policy = CertPolicy(CertSigner(ca / "user_ca"), (f"{HOST}/32",))
    rows: list[tuple[str, str, str]] = []
    key_c, cert_c, key_t, cert_t = [], [], [], []
    for _ in range(ROUNDS):  # interleaved, so a noisy moment hits both sides
        key_c.append(await bench_connect(worker, None))
        cert_c.append(await bench_connect(worker, policy))
        key_t.append(await bench_tail(worker, None))
        cert_t.append(await bench_tail(worker, policy))
    kc, cc = statistics.median(key_c), statistics.median(cert_c)
    kt, ct = statistics.median(key_t), statistics.median(cert_t)
    rows.append(("new connection + bridge, long-lived key", ms(kc), ""))
    rows.append(("new connection + bridge, certificate", ms(cc), f"{cc / kc:.2f}x the key"))
    rows.append(("warm tail -n 200 over the bridge, key", ms(kt), "p50"))
    rows.append(("warm tail -n 200 over the bridge, certificate", ms(ct), f"{ct / kt:.2f}x"))
    return rows


def main() -> int:
    argparse.ArgumentParser(prog="bench.certs", description=__doc__.split("\n\n")[0]).parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="logtorukun-bench-") as tmp:
        ca = make_ca(Path(tmp) / "ca")
        sign, agent = bench_signing(ca)
        worker = Worker(name="bench-certs", sshd_options=["MaxSessions 10"])
        principals = worker.dir / "principals"
        principals.mkdir(mode=0o755)
        (principals / USER).write_text(principals_line(worker))
        worker.sshd_options += [
            f"TrustedUserCAKeys {ca / 'user_ca.pub'}",
            f"AuthorizedPrincipalsFile {principals}/%u",
        ]
        try:
            worker.start()
            rows = [
                ("sign one certificate, in process", ms(sign), f"median of {SIGNS}"),
                ("sign one certificate, via ssh-agent", ms(agent), f"median of {AGENT_SIGNS}"),
                *asyncio.run(run(worker, ca)),
            ]
        finally:
            worker.destroy()
    lines = [
        "| measurement | value | note |",
        "|---|---:|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    DOC.write_text("# Benchmark: certificates (`python -m bench.certs`)\n\n" + table)
    print(f"bench.certs: {time.perf_counter() - t0:.0f} s; wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
