"""One-shot gate start-up against a bare interpreter, and where the milliseconds go.

    .venv/bin/python -m bench.startup [--runs 40]

Runs the gate as sshd does (`/usr/bin/python3 -IS .../logtorukun-gate.py --policy P`,
request in SSH_ORIGINAL_COMMAND, SSH_USER_AUTH as sshd's ExposeAuthInfo writes it, audit
to a file) for `help` and `tail -n 200` of a 10 MB log, the same files packed as a
zipapp (how the gate shipped before: runpy and zipimport in front of it), and
`python3 -IS -c pass`, alternating, and reports medians of wall time and of CPU time
(user + system, from wait4: less disturbed by other load than wall time). Then
`-X importtime` over `--runs` runs of `tail -n 200`: each module's smallest self time
(the least disturbed by other load), largest first. Writes docs/benchmarks-startup.md.
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
import zipfile
from pathlib import Path

from bench._logs import make_log
from logtorukun.ops.bundle import GATE_ENTRY
from logtorukun.ops.gate_install import build_gate

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-startup.md"
PY = "/usr/bin/python3"
# An ed25519 public key, as sshd's ExposeAuthInfo writes it to SSH_USER_AUTH.
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def as_zipapp(gate_dir: Path, dest: Path) -> Path:
    """The gate's files as one zipapp, bytecode beside each source (zipimport never
    looks in __pycache__), `__main__` the entry script but for the lines that find its
    build's directory and put it on sys.path: the comparison row for running a script
    instead."""
    entry = (gate_dir / GATE_ENTRY).read_text()
    head, _, rest = entry.partition("\nhere = ")
    main = head + "\n" + rest.partition("\nsys.path.append(here)\n")[2]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__main__.py", main)
        for path in sorted(gate_dir.rglob("*.py")):
            rel = path.relative_to(gate_dir).as_posix()
            if rel != GATE_ENTRY:
                zf.write(path, rel)
                (pyc,) = path.parent.glob(f"__pycache__/{path.stem}.*.pyc")
                zf.write(pyc, rel + "c")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        entry = build_gate(d / "gate")
        log = d / "app.log"
        make_log(log, 10 << 20)
        policy = d / "policy.toml"
        policy.write_text(
            f'[audit]\ndestination = "file"\npath = "{d}/audit.jsonl"\n'
            f'[[files]]\nroot = "{d}"\npatterns = ["*.log"]\n'
        )
        auth = d / "auth"
        auth.write_text(f"publickey ssh-ed25519 {KEY}\n")
        base = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "127.0.0.1 50000 22", "TMPDIR": tmp}
        gate_env = {**base, "SSH_USER_AUTH": str(auth)}
        argv = [PY, "-IS", str(entry), "--policy", str(policy)]
        pyz = [PY, "-IS", str(as_zipapp(entry.parent, d / "gate.pyz")), *argv[3:]]
        tail = {**gate_env, "SSH_ORIGINAL_COMMAND": f"tail -n 200 {log}"}
        rows = {
            "`python3 -IS -c pass`": ([PY, "-IS", "-c", "pass"], base),
            "gate `help`": (argv, {**gate_env, "SSH_ORIGINAL_COMMAND": "help"}),
            "gate `tail -n 200`": (argv, tail),
            "the same gate as a zipapp, `tail -n 200`": (pyz, tail),
        }
        walls: dict[str, list[float]] = {k: [] for k in rows}
        cpus: dict[str, list[float]] = {k: [] for k in rows}
        for a, e in rows.values():
            timed(a, e)  # warm: page cache, the policy cache
        for _ in range(args.runs):
            for name, (a, e) in rows.items():
                wall, cpu = timed(a, e)
                walls[name].append(wall)
                cpus[name].append(cpu)
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
    bare = statistics.median(walls["`python3 -IS -c pass`"])
    bare_cpu = statistics.median(cpus["`python3 -IS -c pass`"])
    out = [
        "# One-shot gate start-up",
        "",
        f"Command: `.venv/bin/python -m bench.startup` — medians of {args.runs} alternating "
        f"runs; {os.cpu_count()} cores shared with other work (load average {load:.1f} at "
        "the start). CPU = user + system time of the process (wait4).",
        "",
        "| process | wall ms | vs bare | CPU ms | vs bare |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in rows:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        out.append(
            f"| {name} | {w * 1e3:.1f} | {w / bare:.2f}x | {c * 1e3:.1f} | {c / bare_cpu:.2f}x |"
        )
    best = sorted(((min(v), k) for k, v in selfs.items()), reverse=True)
    total = sum(t for t, _ in best)
    out += [
        "",
        f"`-X importtime` of `tail -n 200`: smallest self time per module over {args.runs} "
        f"runs; all {len(best)} modules together {total / 1000:.1f} ms (the interpreter's own "
        "start-up modules included).",
        "",
        "| module | self µs |",
        "|---|---:|",
        *(f"| {k} | {t} |" for t, k in best[:25]),
    ]
    text = "\n".join(out) + "\n"
    print(text)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
