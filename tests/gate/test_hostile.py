"""Resource exhaustion through a real sshd: each request pushes past one limit.

Every case asserts the bound that held (peak RSS of the gate's process tree sampled
while the request ran, elapsed time, exit code), the one-line reason and the audit
record. The gate itself runs under `prlimit --as` here, so a bound that breaks fails
the test rather than the machine.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from logtorukun.gate.errors import Exit
from tests.support.peak import PeakRss
from tests.support.sshd import Worker

MIB = 1 << 20
GATE_AS = 1536 * MIB  # the gate process under test: far above its bound, far below the machine
MAX_MEMORY = 64 * MIB  # the policy's child limit in these tests
BOMB = 128 * MIB  # what bomb.log.gz inflates to: one line, no newline


def _gzip_of_run(byte: bytes, size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = byte * MIB
    return b"".join([*(z.compress(block) for _ in range(size // MIB)), z.flush()])


class Hostile(Worker):
    def plant(self) -> None:
        root = self.root
        (root / "bomb.log.gz").write_bytes(_gzip_of_run(b"A", BOMB))
        (root / "long.log").write_bytes(b"B" * (24 * MIB) + b"\nlast line\n")
        for p in root.iterdir():
            p.chmod(0o644)

    def hostile_policy(self, **limits: Any) -> str:
        values: dict[str, Any] = {"max_seconds": 3, "max_memory": MAX_MEMORY}
        values.update(limits)
        policy = self.default_policy(**values)
        return policy.replace("patterns = [", 'patterns = ["*.gz", ')

    def run(self, command: str, *, timeout: float = 60) -> Ran:
        before = len(self.audit_records())
        assert self.pid is not None
        t0 = time.monotonic()
        with PeakRss(self.pid) as peak:
            out = self.ssh(command, timeout=timeout)
        assert peak.samples > 0 and peak.bytes > 0  # the sampler saw the gate
        return Ran(
            out.returncode,
            out.stdout,
            out.stderr,
            time.monotonic() - t0,
            peak.bytes,
            self.audit_since(before),
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
        w.set_forced_command(f"/usr/bin/prlimit --as={GATE_AS} -- {w.gate_command()}")
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
