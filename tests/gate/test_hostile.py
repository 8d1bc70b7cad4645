"""Resource exhaustion through a real sshd: each request pushes past one limit.

Every case asserts the bound that held (peak RSS of the gate's process tree sampled
while the request ran, elapsed time, exit code), the one-line reason and the audit
record. The gate itself runs under `prlimit --as` here, so a bound that breaks fails
the test rather than the machine.
"""

from __future__ import annotations

import gzip
import json
import os
import pwd
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.gate.protocol import CANCEL, CREDIT, DATA, HEADER, MAX_REQUEST, REQUEST
from tests.gate.test_bridge import BridgeClient
from tests.support.peak import PeakRss
from tests.support.sshd import USER, Worker

MIB = 1 << 20
GATE_AS = 1536 * MIB  # the gate process under test: far above its bound, far below the machine
MAX_MEMORY = 64 * MIB  # the policy's child limit in these tests
BOMB = 128 * MIB  # what bomb.log.gz inflates to: one line, no newline


def repeated_members(member: bytes, count: int) -> bytes:
    """A multi-member .gz: `member` compressed once and repeated. Instant to build, it
    inflates to `count` times the member (gzip -dc reads every member)."""
    return gzip.compress(member, compresslevel=9, mtime=0) * count


MAXRSS_WRAPPER = """\
import os, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, b"%d\\n" % kib)
os.close(fd)
sys.exit(code if code >= 0 else 128 - code)
"""


class Hostile(Worker):
    def plant(self) -> None:
        root = self.root
        (root / "bomb.log.gz").write_bytes(repeated_members(b"A" * MIB, BOMB // MIB))
        # 1 GiB of short lines after one timestamp: seconds of inflating, whatever the verb
        slow = b"2024-12-15 10:00:00 start\n" + b"a\n" * (MIB // 2 - 13)
        (root / "slow.log.gz").write_bytes(repeated_members(slow, 1024))
        (root / "long.log").write_bytes(b"B" * (24 * MIB) + b"\nlast line\n")
        for p in root.iterdir():
            p.chmod(0o644)
        (root / "wide.log").write_bytes(
            b"".join(b"%05d %s\n" % (i, b"w" * 893) for i in range(10000))
        )
        (root / "wide.log").chmod(0o644)
        (root / "private.log").write_bytes(b"root only\n")  # 0600 root: not the gate user's
        (root / "private.log").chmod(0o600)

    def hostile_policy(self, **limits: Any) -> str:
        values: dict[str, Any] = {"max_seconds": 3, "max_memory": MAX_MEMORY}
        values.update(limits)
        policy = self.default_policy(**values)
        return policy.replace("patterns = [", 'patterns = ["*.gz", ')

    def run(self, command: str, *, timeout: float = 60) -> Ran:
        before = len(self.audit_records())
        assert self.pid is not None
        t0 = time.monotonic()
        reported = self.maxrss_log.read_text().count("\n")
        with PeakRss(self.pid) as peak:
            out = self.ssh(command, timeout=timeout)
        # ssh returns after the forced command (the wrapper) has exited, so its line is
        # there. A gate that lives less than one sampling interval is missed by the
        # sampler on a loaded machine; the kernel's maximum is never missed.
        (kib,) = self.maxrss_log.read_text().splitlines()[reported:]
        assert peak.samples > 0 and int(kib) > 0  # the sampler ran, the kernel saw the gate
        ran = Ran(
            out.returncode,
            out.stdout,
            out.stderr,
            time.monotonic() - t0,
            max(peak.bytes, int(kib) * 1024),
            self.audit_since(before),
        )
        ran.largest = int(kib) * 1024
        return ran

    @property
    def maxrss_log(self) -> Path:
        return self.dir / "maxrss" / "log"

    def forced_command(self) -> str:
        """The gate under `prlimit --as`, run by a wrapper that appends the largest
        resident size the kernel saw among the gate and its children (ru_maxrss) to
        `maxrss_log` once they have exited."""
        d = self.maxrss_log.parent
        d.mkdir(mode=0o700, exist_ok=True)
        self.maxrss_log.touch()
        pw = pwd.getpwnam(USER)
        for path in (d, self.maxrss_log):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        wrapper = self.dir / "gate" / "maxrss.py"
        wrapper.write_text(MAXRSS_WRAPPER)
        wrapper.chmod(0o644)
        return (
            f"/usr/bin/python3 -IS {wrapper} {self.maxrss_log}"
            f" /usr/bin/prlimit --as={GATE_AS} -- {self.gate_command()}"
        )


class Ran:
    def __init__(
        self,
        code: int,
        stdout: bytes,
        stderr: bytes,
        elapsed: float,
        peak: int,
        records: list[dict[str, Any]],
    ) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr
        self.elapsed, self.peak, self.records = elapsed, peak, records
        # the kernel's largest RSS among this request's own gate and children (ru_maxrss)
        self.largest = 0

    def __repr__(self) -> str:
        return (
            f"<exit {self.code} in {self.elapsed:.2f}s, peak {self.peak / MIB:.0f} MiB,"
            f" stderr {self.stderr[:300]!r}, records {self.records}>"
        )


@pytest.fixture(scope="module")
def hw() -> Iterator[Hostile]:
    w = Hostile(name="hostile")
    try:
        w.plant()
        w.write_policy(w.hostile_policy())
        w.set_forced_command(w.forced_command())
        w.start()
        yield w
    finally:
        w.destroy()


# ---------------------------------------------------------------- child memory


def test_a_child_that_outgrows_max_memory_ends_at_the_limit(hw: Hostile) -> None:
    """grep holds a whole line: a 128 MiB line (from a 130 KB .gz) needs 128 MiB of it."""
    r = hw.run(f"grep -c x {hw.root}/bomb.log.gz")
    assert r.code == Exit.LIMIT, r
    assert (
        r.stderr
        == b"logtorukun-gate: stopped at the memory limit (64 MiB, max_memory in the policy)\n"
    )
    assert r.peak < MAX_MEMORY + 64 * MIB, r  # the child's limit plus the gate itself
    assert r.elapsed < 20, r
    end = r.records[-1]
    assert end["event"] == "end" and end["exit"] == Exit.LIMIT and "memory limit" in end["reason"]


def test_nested_counted_repetition_is_refused_before_any_child(hw: Hostile) -> None:
    r = hw.run(f"grep -E '((a{{255}}){{255}}){{255}}' {hw.root}/app.log")
    assert r.code == Exit.BAD_REQUEST, r
    assert b"nested repetition counts multiply to 16581375 (at most 255)" in r.stderr
    assert r.elapsed < 10 and r.peak < 64 * MIB, r
    (deny,) = r.records
    assert deny["decision"] == "deny" and deny["exit"] == Exit.BAD_REQUEST
    assert "nested repetition" in deny["reason"]


def test_a_normal_grep_of_a_gz_works_under_the_limit(hw: Hostile) -> None:
    r = hw.run(f"grep -c INFO {hw.root}/app.log.2.gz")
    assert r.code == Exit.OK, r
    lines = gzip.decompress((hw.root / "app.log.2.gz").read_bytes()).splitlines()
    want = sum(b"INFO" in line for line in lines)
    assert want > 0 and r.stdout == f"{want}\n".encode()


# ---------------------------------------------------------------- the worker's memory budget

BUDGET_SLOTS = 4
BUDGET_CHILD = 128 * MIB  # max_memory in this case
BUDGET_TOTAL = BUDGET_SLOTS * 32 * MIB + 3 * 32 * MIB  # the slots' own, and a pool of 96


def test_children_share_the_worker_memory_budget(hw: Hostile) -> None:
    """A grep whose answer is never read holds its 128 MiB (the whole pool) while it
    waits; grep bombs then get only their slot's own 32 MiB and stop there, saying so,
    where each alone would grow to 128 MiB; a normal tail and a normal grep of a .gz
    still work. Once the holder is cancelled, a bomb gets max_memory again."""
    policy = hw.hostile_policy(
        max_seconds=30,
        max_concurrent=BUDGET_SLOTS,
        max_memory=BUDGET_CHILD,
        max_total_memory=BUDGET_TOTAL,
    )
    with hw.policy(policy):
        s = BridgeClient(hw.ssh_argv("bridge"))
        s.request(1, f"grep -e w {hw.root}/wide.log")  # 9 MB of matches, 1 MiB window
        s.next_frame(lambda f: f[1] == 1 and f[0] == DATA)  # running: the pool is its
        bombs = [hw.run(f"grep -c x {hw.root}/bomb.log.gz") for _ in range(2)]
        tail = hw.run(f"tail -n 2 {hw.root}/app.log")
        grep = hw.run(f"grep -c INFO {hw.root}/app.log.2.gz")
        s.send(CANCEL, 1)
        _data, held = s.result(1)
        alone = hw.run(f"grep -c x {hw.root}/bomb.log.gz")
        assert s.close() == (0, b"")
    why = (
        "stopped at the memory limit (32 MiB: other requests' children hold the rest of"
        f" max_total_memory, {BUDGET_TOTAL >> 20} MiB; try again shortly)"
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


# ---------------------------------------------------------------- lines without an end


@pytest.mark.parametrize(
    "command",
    ["cat {root}/bomb.log.gz", "head -n 1 {root}/bomb.log.gz", "cat {root}/long.log"],
)
def test_a_line_longer_than_max_bytes_is_never_held(hw: Hostile, command: str) -> None:
    """128 MiB (inflated) or 24 MiB of one line: the gate holds at most max_bytes of it."""
    with hw.policy(hw.hostile_policy(max_bytes=4 * MIB)):
        r = hw.run(command.format(root=hw.root))
    assert r.code == Exit.LIMIT, r
    assert (
        r.stderr
        == b"logtorukun-gate: output truncated at 4194304 bytes (max_bytes in the policy)\n"
    )
    assert r.stdout == b""
    assert r.peak < 4 * MIB + 48 * MIB, r  # the cap plus the gate's own ~20 MiB and a read
    assert r.elapsed < 15, r
    assert r.records[-1]["exit"] == Exit.LIMIT and r.records[-1]["truncated"] is True


def test_tail_of_a_gz_line_bomb_is_bounded(hw: Hostile) -> None:
    with hw.policy(hw.hostile_policy(max_bytes=4 * MIB)):
        r = hw.run(f"tail -n 5 {hw.root}/bomb.log.gz")
    assert r.code == Exit.LIMIT, r
    assert b"max_bytes" in r.stderr and r.stdout == b""
    assert r.peak < 4 * MIB + 48 * MIB, r


# ---------------------------------------------------------------- the wall clock


@pytest.mark.parametrize(
    "command",
    [
        "tail -n 5 {root}/slow.log.gz",
        "range --since 2024-12-16 {root}/slow.log.gz",
        "head -n 999999999 {root}/slow.log.gz",
        "grep -c zzz {root}/slow.log.gz",
    ],
)
def test_every_reader_stops_at_max_seconds(hw: Hostile, command: str) -> None:
    """1 GiB to inflate takes several seconds; max_seconds = 1 ends each reader at 1 s."""
    with hw.policy(hw.hostile_policy(max_seconds=1, max_lines=10**9, max_bytes=10**10)):
        r = hw.run(command.format(root=hw.root) + " ")
    assert r.code == Exit.LIMIT, r
    assert r.stderr.endswith(b"(time limit in the policy)\n") or b"CPU limit" in r.stderr, r
    assert r.elapsed < 6, r  # 1 s, the ssh handshake and a loaded machine
    end = r.records[-1]
    assert end["event"] == "end" and end["exit"] == Exit.LIMIT
    assert end["duration_ms"] < 2500, end


def test_slow_readers_take_slots(hw: Hostile) -> None:
    """Six slow .gz tails and ranges at once with max_concurrent = 2: never more than two
    run at the same time (from the audit records); the others are refused as busy."""
    commands = [
        f"tail -n 5 {hw.root}/slow.log.gz",
        f"range --since 2024-12-16 {hw.root}/slow.log.gz",
    ]
    with hw.policy(hw.hostile_policy(max_seconds=2, max_concurrent=2)):
        before = len(hw.audit_records())
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(hw.ssh, [commands[i % 2] for i in range(6)]))
        records = hw.audit_records()[before:]
    assert sorted({o.returncode for o in outs}) <= [Exit.LIMIT, Exit.BUSY], outs
    busy = [o for o in outs if o.returncode == Exit.BUSY]
    for o in busy:
        assert o.stderr.startswith(b"logtorukun-gate: busy: 2 requests already running"), o
    denied = [r for r in records if r.get("decision") == "deny"]
    assert len(denied) == len(busy) and all(r["exit"] == Exit.BUSY for r in denied)
    # intervals of the allowed requests, from their start and end records
    starts = {r["id"]: r["ts"] for r in records if r.get("decision") == "allow"}
    ends = {r["id"]: r["ts"] for r in records if r.get("event") == "end"}
    events = sorted([(starts[i], 1) for i in starts] + [(ends[i], -1) for i in ends])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert len(starts) == 6 - len(busy) and peak <= 2, records


# ---------------------------------------------------------------- audit records, sources


def test_a_huge_refused_command_gets_a_bounded_record(hw: Hostile) -> None:
    # 100 KB (an argument holds at most 128 KiB): control characters and backslashes,
    # each 2 to 6 bytes once escaped in JSON
    command = f"tail -n 5 {hw.root}/app.log " + "\x01\\" * 50_000
    r = hw.run(command)
    assert r.code == Exit.BAD_REQUEST, r
    assert r.stderr == b"logtorukun-gate: command longer than 4096 bytes\n"
    raw = hw.audit_path.read_bytes().splitlines()[-1]
    assert len(raw) <= 4000, len(raw)
    (deny,) = r.records
    assert list(deny)[:4] == ["event", "decision", "exit", "reason"]
    assert deny["decision"] == "deny" and deny["command_length"] == len(command)
    assert command.startswith(deny["command"]) and len(deny["command"]) > 100


def test_sources_lists_only_files_the_gate_user_can_read(hw: Hostile) -> None:
    r = hw.run("sources")
    assert r.code == Exit.OK, r
    listed = {f["path"] for f in json.loads(r.stdout)["files"]}
    assert f"{hw.root}/app.log" in listed and f"{hw.root}/bomb.log.gz" in listed
    assert f"{hw.root}/private.log" not in listed
    denied = hw.run(f"tail -n 1 {hw.root}/private.log")  # and indeed it cannot be read
    assert denied.code != Exit.OK and denied.stdout == b""


# ---------------------------------------------------------------- bridge sessions


def test_unread_answers_are_paused_not_buffered(hw: Hostile) -> None:
    """150 `tail -n 10000` of a 9 MB file on one session, none of them read past the
    first window: the gate holds the session's buffer cap, not 150 x 9 MB. Each END
    reports the bytes really delivered; a normal request afterwards works. max_seconds
    = 1: a request left unread waits for its time limit, and 150 of them run 64 at a
    time (the session's worker threads), so the limit is paid three times over."""
    with hw.policy(hw.hostile_policy(max_seconds=1)):
        assert hw.pid is not None
        with PeakRss(hw.pid) as peak:
            s = BridgeClient(hw.ssh_argv("bridge"))
            for rid in range(1, 151):
                s.request(rid, f"tail -n 10000 {hw.root}/wide.log")
            results = [s.result(rid, timeout=60) for rid in range(1, 151)]
        data, end = s.call(999, f"tail -n 2 {hw.root}/app.log")
        code, err = s.close()
    assert end["exit"] == 0 and data == b"".join(
        (hw.root / "app.log").read_bytes().splitlines(True)[-2:]
    )
    assert (code, err) == (0, b"")
    for data, end in results:
        assert end["bytes"] == len(data), end  # what END claims is what arrived
        assert end["exit"] in (Exit.OK, Exit.LIMIT), end
    assert sum(e["exit"] == Exit.LIMIT for _, e in results) > 100  # most were left unread
    # was 2.9 GB; now the gate, session_buffer (8 MiB), one 64 KiB read per running
    # request and their threads: 56 MiB measured
    assert peak.bytes < 128 * MIB, f"{peak.mib:.0f} MiB"


def test_help_and_cancel_are_answered_while_a_slow_read_runs(hw: Hostile) -> None:
    with hw.policy(hw.hostile_policy(max_seconds=20)):
        s = BridgeClient(hw.ssh_argv("bridge"))
        s.request(1, f"tail -n 5 {hw.root}/slow.log.gz")  # seconds of inflating
        s.request(2, f"grep -c nothing {hw.root}/slow.log.gz")
        waits = []
        for rid in range(10, 15):
            t0 = time.monotonic()
            _data, end = s.call(rid, "help")
            waits.append(time.monotonic() - t0)
            assert end["exit"] == 0
        t0 = time.monotonic()
        s.send(CANCEL, 1)
        _data, end1 = s.result(1)
        cancel_wait = time.monotonic() - t0
        s.send(CANCEL, 2)
        _data, end2 = s.result(2)
        assert s.close() == (0, b"")
    assert end1["reason"] == "client went away" and end2["reason"] == "client went away"
    # a blocked frame thread would wait seconds here (the reads take 8 s); allow for load
    assert max(waits) < 1.0 and cancel_wait < 1.0, (waits, cancel_wait)


MALFORMED = [
    b"not json",
    b"[1, 2]",
    b'"a string"',
    b"{}",
    b'{"command": 5}',
    b'{"command": "help", "via": "me"}',
    b'{"command": "help", "positions": "yes"}',
    b"[" * 15000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"command": "' + b"x" * MAX_REQUEST + b'"}',
    b"\xff\xfe",
]


def test_malformed_requests_are_refused_audited_and_quiet(hw: Hostile) -> None:
    """Every malformed REQUEST or frame gets an END refusal and a deny record; the
    session goes on and nothing (no traceback) reaches stderr."""
    before = len(hw.audit_records())
    s = BridgeClient(hw.ssh_argv("bridge"))
    for rid, payload in enumerate(MALFORMED, 1):
        s.send(REQUEST, rid, payload)
        data, end = s.result(rid)
        assert data == b"" and end["exit"] == Exit.BAD_REQUEST, (payload[:40], end)
        assert end["reason"].startswith("malformed request: "), end
    s.send(77, 100, b"x")  # unknown frame type
    assert s.result(100)[1]["exit"] == Exit.BAD_REQUEST
    s.send(CREDIT, 101, b"\x00")  # CREDIT of the wrong size for an id not in use
    assert s.result(101)[1]["exit"] == Exit.BAD_REQUEST
    s.send_raw(HEADER.pack(3 << 20, REQUEST, 102) + b"y" * (3 << 20))  # over MAX_FRAME
    assert "is over" in s.result(102)[1]["reason"]
    data, end = s.call(200, f"tail -n 1 {hw.root}/app.log")
    assert end["exit"] == 0 and data.endswith(b"\n")
    assert s.close() == (0, b"")
    denied = [r for r in hw.audit_records()[before:] if r.get("decision") == "deny"]
    assert len(denied) == len(MALFORMED) + 3, denied
    assert all(r["exit"] == Exit.BAD_REQUEST for r in denied)
    raw = hw.audit_path.read_bytes().splitlines()[before:]
    assert max(len(line) for line in raw) <= 4000


def test_too_many_streams_is_refused_and_audited(hw: Hostile) -> None:
    with hw.policy(hw.hostile_policy(max_seconds=20)):
        before = len(hw.audit_records())
        s = BridgeClient(hw.ssh_argv("bridge"))
        for rid in range(1, 1025):  # each waits for credit that never comes
            s.request(rid, f"tail -n 10000 {hw.root}/wide.log")
        s.request(5000, f"tail -n 1 {hw.root}/secret-name.log")
        _data, end = s.result(5000)
        assert end["exit"] == Exit.BUSY and "too many streams (at most 1024)" in end["reason"]
        for rid in range(1, 1025):
            s.send(CANCEL, rid)
        for rid in range(1, 1025):
            s.result(rid, timeout=60)
        _data, end = s.call(5001, f"tail -n 1 {hw.root}/app.log")
        assert end["exit"] == 0
        assert s.close() == (0, b"")
        records = hw.audit_records()[before:]
    (busy,) = [r for r in records if r.get("exit") == Exit.BUSY]
    assert busy["decision"] == "deny" and "secret-name.log" in busy["command"]
