"""The gate against the plain tools it wraps, on one generated 1 GiB log, in one run.

    .venv/bin/python -m bench.gate [--size-mib 1024] [--runs 7]

Each row runs the gate as a whole process (`/usr/bin/python3 -IS logtorukun-gate.py`, as sshd
starts it, SSH itself excluded) and the plain command on the same file, alternating, and
reports medians and the ratio. The file is cached in bench/data/.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._logs import make_log
from logtorukun.ops.gate_install import build_gate

DATA = Path(__file__).parent / "data"
RARE = "needle-7f3a9c"


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[:300]!r}")
    return elapsed, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gate")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    log = DATA / f"gate-{args.size_mib}m.log"
    print(f"generating {log} ({args.size_mib} MiB) if missing ...", file=sys.stderr)
    make_log(log, args.size_mib << 20, rare=RARE)
    size = log.stat().st_size

    with tempfile.TemporaryDirectory() as tmp:
        gate = build_gate(Path(tmp) / "gate")
        policy = Path(tmp) / "policy.toml"
        policy.write_text(
            f"[limits]\nmax_lines = 100000000\nmax_bytes = 100000000000\nmax_seconds = 600\n"
            f'[audit]\ndestination = "file"\npath = "{tmp}/audit.jsonl"\n'
            f'[[files]]\nroot = "{log.parent}"\npatterns = ["*.log"]\n'
        )
        base_env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "127.0.0.1 50000 22"}

        def gate_cmd(command: str) -> tuple[list[str], dict[str, str]]:
            env = {**base_env, "SSH_ORIGINAL_COMMAND": command}
            return ["/usr/bin/python3", "-IS", str(gate), "--policy", str(policy)], env

        cenv = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        rows = [
            ("start-up (`help`)", gate_cmd("help"), (["/usr/bin/true"], cenv), False),
            (
                "tail -n 200",
                gate_cmd(f"tail -n 200 {log}"),
                (["tail", "-n", "200", str(log)], cenv),
                False,
            ),
            (
                "grep rare fixed string",
                gate_cmd(f"grep {RARE} {log}"),
                (["grep", "-F", RARE, str(log)], cenv),
                True,
            ),
            (
                "grep ERROR (1/6 of lines out)",
                gate_cmd(f"grep ERROR {log}"),
                (["grep", "-F", "ERROR", str(log)], cenv),
                True,
            ),
            (
                "grep -c ERROR",
                gate_cmd(f"grep -c ERROR {log}"),
                (["grep", "-F", "-c", "ERROR", str(log)], cenv),
                True,
            ),
            (
                "grep -i (case-insensitive)",
                gate_cmd(f"grep -i -c {RARE.upper()} {log}"),
                (["grep", "-F", "-i", "-c", RARE.upper(), str(log)], cenv),
                True,
            ),
        ]
        out = [
            f"file: {size / 2**20:.0f} MiB, {args.runs} runs each, medians; gate = whole process "
            "(`/usr/bin/python3 -IS logtorukun-gate.py`), plain = the same tool run directly",
            "",
            "| request | gate | plain | gate/plain time | gate throughput | plain throughput "
            "| gate throughput without start-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        startup = 0.0
        for name, (gargv, genv), (pargv, penv), scan in rows:
            timed(gargv, genv)  # warm the page cache and the interpreter
            timed(pargv, penv)
            g_times, p_times = [], []
            g_out = p_out = b""
            for _ in range(args.runs):
                t, g_out = timed(gargv, genv)
                g_times.append(t)
                t, p_out = timed(pargv, penv)
                p_times.append(t)
            if name != "start-up (`help`)" and g_out != p_out:
                raise SystemExit(f"{name}: gate output differs from plain output")
            g, p = statistics.median(g_times), statistics.median(p_times)
            if not scan:
                startup = startup or g  # the first row: the gate's fixed cost per process
            gt = f"{size / g / 2**30:.2f} GiB/s" if scan else "-"
            pt = f"{size / p / 2**30:.2f} GiB/s" if scan else "-"
            net = f"{size / max(g - startup, 1e-6) / 2**30:.2f} GiB/s" if scan else "-"
            out.append(
                f"| {name} | {g * 1000:.1f} ms | {p * 1000:.1f} ms | {g / p:.2f}x "
                f"| {gt} | {pt} | {net} |"
            )
    table = "\n".join(out)
    print(table)
    (Path(__file__).parent.parent / "docs").mkdir(exist_ok=True)
    (Path(__file__).parent.parent / "docs" / "benchmarks-gate.md").write_text(
        "Command: `.venv/bin/python -m bench.gate`\n\n" + table + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
