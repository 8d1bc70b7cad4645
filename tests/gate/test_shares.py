"""What the requests of one worker share, through a real sshd: the memory budget of all
their children (`max_total_memory`) and the CPU, where slow work yields to cheap reads.

Each case pushes past the shared bound and checks that it held, that the request that
hit it said why in one line and in its audit record, and that a normal reader went on.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.gate.protocol import CANCEL, DATA
from logtorukun.gate.slots import SLOW_NICE
from logtorukun.ops.system import descendants
from tests.gate.test_bridge import BridgeClient
from tests.gate.test_hostile import MIB, Hostile

WAIT = 30.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def hw() -> Iterator[Hostile]:
    w = Hostile(name="shares")
    try:
        w.plant()
        w.write_policy(w.hostile_policy())
        w.set_forced_command(w.forced_command())
        w.start()
        yield w
    finally:
        w.destroy()


# ---------------------------------------------------------------- the memory budget

SLOTS = 4
MAX_MEMORY = 128 * MIB
POOL = 3 * 32 * MIB  # beyond the slots' own 32 MiB each: one request's max_memory
TOTAL = SLOTS * 32 * MIB + POOL


def test_children_share_the_worker_memory_budget(hw: Hostile) -> None:
    """A grep whose answer is never read holds its 128 MiB (the whole pool) while it
    waits; grep bombs then get only their slot's own 32 MiB and stop there, saying so,
    where each alone would grow to 128 MiB; a normal tail and a normal grep of a .gz
    still work. Once the holder is cancelled, a bomb gets max_memory again."""
    policy = hw.hostile_policy(
        max_seconds=30, max_concurrent=SLOTS, max_memory=MAX_MEMORY, max_total_memory=TOTAL
    )
    with hw.policy(policy):
        s = BridgeClient(hw.ssh_argv("bridge"))
        s.request(1, f"grep -e w {hw.root}/wide.log")  # 9 MB of matches, 1 MiB window
        s.next_frame(lambda f: f[1] == 1 and f[0] == DATA, WAIT)  # running: the pool is its
        bombs = [hw.run(f"grep -c x {hw.root}/bomb.log.gz") for _ in range(2)]
        tail = hw.run(f"tail -n 2 {hw.root}/app.log")
        grep = hw.run(f"grep -c INFO {hw.root}/app.log.2.gz")
        s.send(CANCEL, 1)
        _data, held = s.result(1, WAIT)
        alone = hw.run(f"grep -c x {hw.root}/bomb.log.gz")
        assert s.close() == (0, b"")
    why = (
        "stopped at the memory limit (32 MiB: other requests' children hold the rest of"
        f" max_total_memory, {TOTAL >> 20} MiB; try again shortly)"
    )
    for r in bombs:
        assert r.code == Exit.LIMIT and r.stderr == f"logtorukun-gate: {why}\n".encode(), r
        # the largest process of the request (the gate itself or grep) stayed far below
        # the 128 MiB a bomb's grep reaches on its own (below)
        assert r.largest < 48 * MIB, r
        end = r.records[-1]
        assert end["event"] == "end" and end["exit"] == Exit.LIMIT and end["reason"] == why
    assert tail.code == Exit.OK and tail.stdout.count(b"\n") == 2, tail
    assert grep.code == Exit.OK and int(grep.stdout) > 0, grep
    assert held["reason"] == "client went away", held
    assert alone.code == Exit.LIMIT and b"(128 MiB, max_memory in the policy)" in alone.stderr
    assert alone.largest > 48 * MIB, alone  # what the budget kept the bombs from


# ---------------------------------------------------------------- the CPU


def processes(root: int) -> dict[int, tuple[str, int, int]]:
    """pid -> (command, parent, nice) of every process below `root`."""
    found = {}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        found[pid] = (head.split("(", 1)[1], int(fields[1]), int(fields[16]))
    return found


def thread_nices(pid: int) -> dict[int, int]:
    """tid -> nice of every thread of `pid` (nice is per thread on Linux)."""
    nices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                nices[int(tid)] = int(f.read().rsplit(")", 1)[1].split()[16])
        except OSError:
            continue  # the thread ended meanwhile
    return nices


def wait_for(what: str, check: Callable[[], T | None]) -> T:
    """Poll `check` (every 20 ms, for at most WAIT) until it gives something."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def grep_child(hw: Hostile) -> tuple[int, int] | None:
    """(grep's pid, its gate's pid) once a gate runs grep, else None."""
    assert hw.pid is not None
    procs = processes(hw.pid)
    for pid, (comm, parent, _nice) in procs.items():
        if comm == "grep" and parent in procs and procs[parent][0] == "python3":
            return pid, parent
    return None


def test_a_bridge_keeps_its_priority_for_slow_work(hw: Hostile) -> None:
    """Inside a bridge nothing is lowered (a lowered thread holding the GIL or a slot
    would slow the session's cheap requests): while a slow grep runs, every thread of
    the session and its children stay at the session's priority."""
    with hw.policy(hw.hostile_policy(max_seconds=30)):
        s = BridgeClient(hw.ssh_argv("bridge"))
        s.request(1, f"grep -c zzz {hw.root}/slow.log.gz")
        _grep, gate = wait_for("grep to start", lambda: grep_child(hw))
        assert hw.pid is not None
        procs = processes(hw.pid)
        kids = {comm: nice for comm, parent, nice in procs.values() if parent == gate}
        threads = thread_nices(gate)
        s.send(CANCEL, 1)
        _data, end1 = s.result(1, WAIT)
        assert s.close() == (0, b"")
    base = threads[gate]
    assert set(threads.values()) == {base} and kids == {"gzip": base, "grep": base}
    assert end1["reason"] == "client went away"


def test_slow_work_runs_at_a_lower_priority_one_shot(hw: Hostile) -> None:
    """A one-shot gate lowers itself once it holds a slot, and its children inherit it."""
    with hw.policy(hw.hostile_policy(max_seconds=3)):
        ssh = subprocess.Popen(
            hw.ssh_argv(f"grep -c zzz {hw.root}/slow.log.gz"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            grep, gate = wait_for("grep to start", lambda: grep_child(hw))
            assert hw.pid is not None
            procs = processes(hw.pid)
            base = os.getpriority(os.PRIO_PROCESS, hw.pid)  # sshd's, which the gate starts at
        finally:
            _out, err = ssh.communicate(timeout=WAIT)
        cheap = hw.run(f"tail -n 1 {hw.root}/app.log")
    slow = min(19, base + SLOW_NICE)
    assert base < slow and procs[gate][2] == slow and procs[grep][2] == slow, procs
    assert ssh.returncode == Exit.LIMIT and b"time limit" in err, (ssh.returncode, err)
    assert cheap.code == Exit.OK
