"""One-shot gate start-up against a bare interpreter, and where the milliseconds go.

    .venv/bin/python -m bench.startup [--runs 40]

Runs the gate as sshd does (`/usr/bin/python3 -IS gate.pyz`, request in
SSH_ORIGINAL_COMMAND, audit to a file) for `help` and `tail -n 200` of a 10 MB log, and
`python3 -IS -c pass`, alternating, and reports medians. Then `-X importtime` over
`--runs` runs of `tail -n 200`: each module's smallest self time (the least disturbed
by other load), largest first. Writes docs/benchmarks-startup.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._logs import make_log
from logtorukun.ops.bundle import build_gate_zipapp

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-startup.md"
PY = "/usr/bin/python3"


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        gate = build_gate_zipapp(d / "gate.pyz")
        log = d / "app.log"
        make_log(log, 10 << 20)
        policy = d / "policy.toml"
        policy.write_text(
            f'[audit]\ndestination = "file"\npath = "{d}/audit.jsonl"\n'
            f'[[files]]\nroot = "{d}"\npatterns = ["*.log"]\n'
        )
        base = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "127.0.0.1 50000 22", "TMPDIR": tmp}
        argv = [PY, "-IS", str(gate), "--policy", str(policy)]
        rows = {
            "`python3 -IS -c pass`": ([PY, "-IS", "-c", "pass"], base),
            "gate `help`": (argv, {**base, "SSH_ORIGINAL_COMMAND": "help"}),
            "gate `tail -n 200`": (argv, {**base, "SSH_ORIGINAL_COMMAND": f"tail -n 200 {log}"}),
        }
        times: dict[str, list[float]] = {k: [] for k in rows}
        for a, e in rows.values():
            timed(a, e)  # warm: page cache, the policy cache
        for _ in range(args.runs):
            for name, (a, e) in rows.items():
                times[name].append(timed(a, e))
        selfs: dict[str, list[int]] = collections.defaultdict(list)
        imp_env = rows["gate `tail -n 200`"][1]
        for _ in range(args.runs):
            r = subprocess.run(
                [PY, "-IS", "-X", "importtime", *argv[2:]],
                env=imp_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                check=True,
            )
            for line in r.stderr.splitlines():
                parts = line.split("|")
                if line.startswith("import time:") and len(parts) == 3 and "self" not in line:
                    selfs[parts[2].strip()].append(int(parts[0].split(":")[1]))
    bare = statistics.median(times["`python3 -IS -c pass`"])
    out = [
        "# One-shot gate start-up",
        "",
        f"Command: `.venv/bin/python -m bench.startup` — medians of {args.runs} alternating "
        f"runs; {os.cpu_count()} cores shared with other work (load average {load:.1f} at "
        "the start).",
        "",
        "| process | median ms | vs bare interpreter |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        m = statistics.median(ts)
        out.append(f"| {name} | {m * 1e3:.1f} | {m / bare:.2f}x |")
    best = sorted(((min(v), k) for k, v in selfs.items()), reverse=True)
    total = sum(t for t, _ in best)
    out += [
        "",
        f"`-X importtime` of `tail -n 200`: smallest self time per module over {args.runs} "
        f"runs; all modules together {total / 1000:.1f} ms (the interpreter's own "
        "start-up modules included).",
        "",
        "| module | self µs |",
        "|---|---:|",
        *(f"| {k} | {t} |" for t, k in best[:20]),
    ]
    text = "\n".join(out) + "\n"
    print(text)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
