"""The gate's own CPU for streaming a whole 1 GiB log, against `/bin/cat`, without SSH.

    .venv/bin/python -m bench.stream_cpu [--size-mib 1024] [--rounds 5]

bench.stream measures throughput over SSH, where sshd and the client share the 2 cores
with the command and the load of the machine moves every figure. This one isolates the
command: it writes the file into a pipe that this process drains in 32 KiB reads (the
size sshd reads a channel's pipe with), and the table gives the median CPU seconds
(user + system, from wait4) the command used per GiB: `/bin/cat FILE`, the gate's
one-shot `cat FILE` and a gate bridge session serving `cat FILE` (credit granted up
front, so it never waits for it). The policy has bench.stream's caps. Writes
docs/benchmarks-stream_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._logs import make_log
from logtorukun.client.bridge import Frames
from logtorukun.gate.protocol import CREDIT, CREDIT_BODY, DATA, END, REQUEST, pack

DATA_DIR = Path(__file__).parent / "data"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-stream_cpu.md"
READ = 32 << 10


def policy(tmp: Path, log: Path) -> Path:
    (tmp / "state").mkdir()
    path = tmp / "policy.toml"
    path.write_text(
        "[limits]\nmax_lines = 1000000000\nmax_bytes = 100000000000\nmax_seconds = 600\n"
        f'max_concurrent = 8\nstate_dir = "{tmp / "state"}"\n'
        f'[audit]\ndestination = "file"\npath = "{tmp / "audit.jsonl"}"\n'
        f'[[files]]\nroot = "{log.parent}"\npatterns = ["{log.name}"]\n'
    )
    return path


def run(argv: list[str], env: dict[str, str], request: bytes | None) -> tuple[int, float]:
    """Bytes the command wrote (DATA payload for a bridge) and its CPU seconds."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    fd = proc.stdout.fileno()
    got = 0
    if request is None:
        proc.stdin.close()
        while chunk := os.read(fd, READ):
            got += len(chunk)
    else:
        proc.stdin.write(request)
        proc.stdin.flush()
        frames = Frames()
        done = False
        while not done and (chunk := os.read(fd, READ)):
            for ftype, _rid, payload in frames.feed(chunk):
                got += len(payload) if ftype == DATA else 0
                done = done or ftype == END
        proc.stdin.close()  # EOF ends the session
        while os.read(fd, READ):
            pass
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} ... exited {proc.returncode}")
    return got, usage.ru_utime + usage.ru_stime


def measure(args: argparse.Namespace) -> str:
    log = DATA_DIR / f"stream-{args.size_mib}m.log"
    print(f"bench.stream_cpu: generating {log} if missing ...", file=sys.stderr)
    make_log(log, args.size_mib << 20)
    size = log.stat().st_size
    load = os.getloadavg()[0]
    gate = [sys.executable, "-m", "logtorukun.gate", "--policy"]
    request = pack(REQUEST, 1, json.dumps({"command": f"cat {log}"}).encode())
    request += pack(CREDIT, 1, CREDIT_BODY.pack(0xFFFFFFFF))
    with tempfile.TemporaryDirectory(prefix="bench-stream-cpu-") as tmp:
        gate.append(str(policy(Path(tmp), log)))
        methods = [
            ("`/bin/cat`", ["/bin/cat", str(log)], {}, None),
            ("gate `cat`, one-shot", gate, {"SSH_ORIGINAL_COMMAND": f"cat {log}"}, None),
            ("gate `cat`, bridge", gate, {"SSH_ORIGINAL_COMMAND": "bridge"}, request),
        ]
        cpu: dict[str, list[float]] = {}
        for rnd in range(args.rounds):
            for name, argv, extra, req in methods:
                print(f"bench.stream_cpu: round {rnd + 1}: {name}", file=sys.stderr)
                got, seconds = run(argv, {**os.environ, **extra}, req)
                if got != size:
                    raise SystemExit(f"{name}: {got} of {size} bytes")
                cpu.setdefault(name, []).append(seconds / (size / (1 << 30)))
    out = [
        "# The gate's own CPU for streaming a file, against `/bin/cat`",
        "",
        f"Command: `.venv/bin/python -m bench.stream_cpu` — {size:,} bytes "
        f"({args.size_mib} MiB) into a pipe read in 32 KiB pieces, no SSH; median of "
        f"{args.rounds} rounds (load average {load:.1f} at the start).",
        "",
        "| method | CPU s per GiB | vs `/bin/cat` |",
        "|---|---:|---:|",
    ]
    base = statistics.median(cpu[methods[0][0]])
    for name, *_ in methods:
        med = statistics.median(cpu[name])
        out.append(f"| {name} | {med:.3f} | {med / base:.2f}x |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_cpu")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    text = measure(ap.parse_args())
    print(text)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
