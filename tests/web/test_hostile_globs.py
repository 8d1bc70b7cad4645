"""User globs cannot stall the server: several users send adversarial `hosts=` and `path=`
globs to a real `logtorukun serve` while another client polls /healthz; /healthz keeps
answering and the server spends a few milliseconds of CPU per request (its own CPU time,
which other processes on a loaded machine do not change; a backtracking matcher spent
seconds to minutes on each). Over-long globs are a clear, audited 422."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from logtorukun.audit import AuditStore
from logtorukun.gate.globs import MAX_GLOB_CHARS, MAX_GLOB_WILDCARDS
from tests.support.sshd import Worker
from tests.web.support import served

LONG_HOST = "a" * 63  # the longest name the config accepts
# Before linear matching each of these took `re` from seconds to minutes.
EVIL_HOSTS = ",".join(["**" * 7 + "b", "*a" * 15 + "*b"])
EVIL_PATH = "/" + "**" * 7 + "b"

ATTACKER = textwrap.dedent(
    """
    import sys, time, httpx
    url, token, hosts, path, rounds = sys.argv[1:6]
    with httpx.Client(base_url=url, timeout=60,
                      headers={"authorization": "Bearer " + token}) as c:
        codes = []
        for _ in range(int(rounds)):
            r = c.get("/api/search", params={"hosts": hosts, "path": path, "pattern": "x"})
            codes.append(r.status_code)
            time.sleep(0.02)  # a steady stream, not a CPU race between test processes
    print(" ".join(map(str, codes)))
    """
)


def test_adversarial_globs_do_not_delay_healthz(web_worker: Worker, tmp_path: Path) -> None:
    extra = "\n".join(
        [
            "[[host]]",
            f'name = "{LONG_HOST}"',
            'address = "127.0.0.1"',
            f"port = {web_worker.port}",
            f'user = "{web_worker.user}"',
            f'key = "{web_worker.client_key}"',
            f'known_hosts = "{web_worker.known_hosts}"',
            'labels = ["web"]',
        ]
    )
    users = {"olivia": ["ops"], "nobody": ["nothing"], "dan": ["dbsearch"]}
    with served(tmp_path, web_worker, users, extra=extra) as srv:
        attacks = [
            ("olivia", EVIL_HOSTS, "/x"),  # search grant: the globs meet the long name
            ("nobody", EVIL_HOSTS, EVIL_PATH),  # no grant at all: nothing is matched
            ("dan", EVIL_HOSTS, EVIL_PATH),
            ("olivia", "web1", EVIL_PATH),  # path glob against the worker's file list
        ]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ATTACKER, srv.url, srv.tokens[u], h, p, "25"],
                stdout=subprocess.PIPE,
                text=True,
                # The load generators yield the CPU to the server and the poller: what is
                # measured is the server's event loop, not the test machine's scheduler.
                preexec_fn=lambda: os.nice(19),
            )
            for u, h, p in attacks
        ]
        latencies: list[float] = []
        cpu_before = _cpu_seconds(srv.proc.pid)
        try:
            with httpx.Client(base_url=srv.url, timeout=10) as poll:
                deadline = time.monotonic() + 120
                while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    r = poll.get("/healthz")
                    latencies.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    time.sleep(0.01)
        finally:
            outputs = [p.communicate(timeout=60)[0] for p in procs]
        codes = [line.split() for line in outputs]
        assert all(len(c) == 25 for c in codes), outputs
        # The long host is granted to olivia but her globs match nothing: a refusal.
        assert set(codes[0]) == {"404"}
        assert set(codes[1]) == {"404"} and set(codes[2]) == {"404"}
        assert set(codes[3]) == {"200"}  # ran on the worker, the glob matched no file
        assert len(latencies) >= 10
        served_requests = sum(len(c) for c in codes) + len(latencies)
        per_request = (_cpu_seconds(srv.proc.pid) - cpu_before) / served_requests
        assert per_request < 0.05, f"{per_request * 1000:.1f} ms of server CPU per request"

        c = srv.client("olivia")
        too_long = "/" + "a" * MAX_GLOB_CHARS
        r = c.get("/api/search", params={"path": too_long, "pattern": "x"})
        assert r.status_code == 422 and r.json()["reason"].startswith("path: ")
        many = "/" + "*a" * (MAX_GLOB_WILDCARDS + 1)
        r = c.get("/api/search", params={"path": many, "pattern": "x"})
        assert r.status_code == 422
        assert f"at most {MAX_GLOB_WILDCARDS} wildcards" in r.json()["reason"]
        r = c.get("/api/search", params={"hosts": "*a" * 17, "path": "/x", "pattern": "x"})
        assert r.status_code == 422 and r.json()["reason"].startswith("hosts: ")
        r = c.get(
            "/api/search", params={"hosts": ",".join(["w"] * 17), "pattern": "x", "path": "/x"}
        )
        assert r.status_code == 422 and "at most 16" in r.json()["reason"]
    store = AuditStore(tmp_path / "logtorukun.db", readonly=True)
    try:
        refused = store.query(event="refused", user="olivia", limit=100)
        reasons = [x.reason or "" for x in refused if x.params.get("status") == 422]
        assert any("wildcards" in r for r in reasons) and any("characters" in r for r in reasons)
        searches = store.query(event="read_end", user="olivia", limit=1000)
        assert any(json.dumps(x.outcome).find('"files": 0') >= 0 for x in searches)
    finally:
        store.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
