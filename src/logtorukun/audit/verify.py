"""Walking the hash chain: which records were edited, deleted or reordered, and the report.

Editing, deleting or reordering a record breaks the chain, and the report names the first
bad seq. Removing the *last* records, or rewriting the tail and re-hashing it, leaves a
valid, shorter chain: only an anchor kept elsewhere (`expect_head`) catches that, or, for
a careless truncation, `sqlite_sequence`'s memory of the highest seq ever written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import AuditError, explain
from .records import GENESIS_HASH, AuditRef, record_hash
from .schema import SELECT, missing_triggers, row_content


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    seq: int
    kind: Literal["edited", "deleted", "reordered", "broken_chain", "guard_missing"]
    detail: str

    def __str__(self) -> str:
        if self.kind == "guard_missing":
            return f"guard missing: {self.detail}"
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    head: AuditRef | None = None
    problems: list[VerifyProblem] = field(default_factory=list)
    # Problems found, including those beyond the `max_problems` kept in `problems`.
    problem_count: int = 0
    # Suspicious but not a broken chain (e.g. a trigger someone dropped).
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    # Checkpoints (from the sinks) the store was compared with.
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_bad(self) -> int | None:
        """The first bad record (a missing guard is not a record: seq 0 if it is all)."""
        seqs = [p.seq for p in self.problems if p.kind != "guard_missing"]
        return seqs[0] if seqs else (0 if self.problems else None)

    def summary(self) -> str:
        head = f"head {self.head.seq} {self.head.hash}" if self.head else "head none"
        if self.ok:
            return f"audit chain OK: {self.records} records, {head}"
        if self.first_bad == 0:
            return (
                f"audit store UNGUARDED: {self.problem_count} problem(s) in {self.records} "
                f"records, {head}"
            )
        return (
            f"audit chain BROKEN: first bad seq {self.first_bad}; "
            f"{self.problem_count} problem(s) in {self.records} records, {head}"
        )


def verify_chain(
    connect: Callable[[], sqlite3.Connection],
    path: Path,
    expect_head: AuditRef | None = None,
    *,
    max_problems: int = 100,
    checkpoints: Sequence[AuditRef] = (),
) -> VerifyReport:
    """Walk the whole chain from one snapshot, read through a connection from `connect`.

    A missing append-only trigger is a problem (exit 1), not a warning: without it the
    store no longer refuses an UPDATE or DELETE. Each of `checkpoints` (seq and hash the
    server sent to its sinks) must be in the store with the same hash: a seq past the
    end is truncation, another hash is a rewrite."""
    started = time.perf_counter()
    report = VerifyReport()
    # Bounded memory even when every record of a big store was rewritten.
    problems: list[VerifyProblem] = []

    def add(problem: VerifyProblem) -> None:
        report.problem_count += 1
        if len(problems) < _KEEP_PROBLEMS:
            problems.append(problem)

    conn = connect()
    try:
        conn.execute("BEGIN")
        for missing in missing_triggers(conn):
            add(VerifyProblem(0, "guard_missing", missing))
        anchors = {c.seq: c.hash for c in checkpoints}
        report.checkpoints = len(anchors)
        cursor = conn.execute(SELECT + " ORDER BY seq")
        expected_seq, expected_prev = 1, GENESIS_HASH
        prev_flagged = False
        mismatched: list[tuple[int, dict[str, Any], str, str]] = []
        anchor_hash: str | None = None
        last: tuple[int, str] | None = None
        while rows := cursor.fetchmany(1000):
            for row in rows:
                report.records += 1
                seq, prev_hash, stored = row[0], row[-2], row[-1]
                gap = seq != expected_seq
                if gap:
                    add(_gap_problem(expected_seq, seq))
                flagged = False
                try:
                    content = row_content(row)
                except ValueError as exc:
                    add(VerifyProblem(seq, "edited", str(exc)))
                    flagged = True
                else:
                    if not isinstance(prev_hash, str) or record_hash(prev_hash, content) != stored:
                        if len(mismatched) < _KEEP_PROBLEMS:
                            mismatched.append((seq, content, str(prev_hash), str(stored)))
                        else:
                            add(VerifyProblem(seq, "edited", _EDITED))
                        flagged = True
                    elif prev_hash != expected_prev and not gap and not prev_flagged:
                        add(_unlinked_problem(seq))
                if expect_head is not None and seq == expect_head.seq:
                    anchor_hash = stored
                want = anchors.pop(seq, None)
                if want is not None and want != stored:
                    add(
                        VerifyProblem(
                            seq,
                            "edited",
                            f"hash {stored[:16]}... differs from checkpoint {want[:16]}... "
                            "(rewritten after the checkpoint was sent)",
                        )
                    )
                expected_seq, expected_prev, prev_flagged = seq + 1, stored, flagged
                last = (seq, stored)
        for problem in _classify_mismatches(mismatched):
            add(problem)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise AuditError(explain(path, exc, "read the audit database")) from None
    finally:
        conn.close()
    last_seq = last[0] if last else 0
    report.head = AuditRef(*last) if last else None
    high_water = row[0] if row and isinstance(row[0], int) else 0
    if high_water > last_seq:
        add(
            VerifyProblem(
                last_seq + 1,
                "deleted",
                f"the store once held seq {high_water} but now ends at seq {last_seq} "
                "(records removed from the end)",
            )
        )
    beyond = sorted(seq for seq in anchors if seq > last_seq)
    if beyond:
        add(
            VerifyProblem(
                last_seq + 1,
                "deleted",
                f"a checkpoint names seq {beyond[-1]} but the store ends at seq {last_seq} "
                "(the last records were removed)",
            )
        )
    if expect_head is not None:
        if expect_head.seq > last_seq and high_water <= last_seq:
            add(
                VerifyProblem(
                    last_seq + 1,
                    "deleted",
                    f"expected head seq {expect_head.seq} but the store ends at seq "
                    f"{last_seq} (the last records were removed)",
                )
            )
        elif anchor_hash is not None and anchor_hash != expect_head.hash:
            add(
                VerifyProblem(
                    expect_head.seq,
                    "edited",
                    f"hash {anchor_hash[:16]}... differs from the expected head "
                    f"{expect_head.hash[:16]}... (rewritten since the anchor was taken)",
                )
            )
    problems.sort(key=lambda p: p.seq)
    report.problems = problems[:max_problems]
    report.seconds = time.perf_counter() - started
    return report


_KEEP_PROBLEMS = 1000
_EDITED = "its contents no longer match its hash"


def parse_checkpoints(lines: Iterable[str]) -> list[AuditRef]:
    """Checkpoints out of a sink's copy: JSON lines or syslog lines carrying
    `{"checkpoint": {"seq": N, "hash": H, ...}}`; full records (with seq and hash) in a
    JSON-lines copy count as checkpoints too. Other lines are skipped."""
    out: list[AuditRef] = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        point = doc.get("checkpoint", doc)
        if not isinstance(point, dict):
            continue
        seq, digest = point.get("seq"), point.get("hash")
        if isinstance(seq, int) and seq > 0 and isinstance(digest, str) and len(digest) == 64:
            out.append(AuditRef(seq, digest))
    return out


def _gap_problem(expected: int, found: int) -> VerifyProblem:
    if found < expected:  # cannot happen with an INTEGER PRIMARY KEY, but say so if it does
        return VerifyProblem(found, "reordered", f"out of order after seq {expected - 1}")
    if found == expected + 1:
        detail = f"missing; the chain jumps from seq {expected - 1} to seq {found}"
    else:
        detail = f"seq {expected}..{found - 1} missing; the chain jumps to seq {found}"
    return VerifyProblem(expected, "deleted", detail)


def _unlinked_problem(seq: int) -> VerifyProblem:
    if seq == 1:
        return VerifyProblem(seq, "broken_chain", "does not start from the genesis hash")
    return VerifyProblem(
        seq,
        "broken_chain",
        f"does not chain to seq {seq - 1}: seq {seq - 1} was rewritten and re-hashed, "
        "or this record was forged",
    )


def _classify_mismatches(
    mismatched: list[tuple[int, dict[str, Any], str, str]],
) -> list[VerifyProblem]:
    """Tell a moved record (its hash fits another seq) from an edited one.

    A reorder permutes seqs among the mismatched records, so those seqs (and the
    neighbours, for a shift) are the only candidates worth hashing.
    """
    seqs = [m[0] for m in mismatched] if len(mismatched) <= 200 else []
    out: list[VerifyProblem] = []
    for seq, content, prev_hash, stored in mismatched:
        moved_from = None
        for candidate in dict.fromkeys([*seqs, seq - 1, seq + 1]):
            if candidate == seq or candidate < 1:
                continue
            if record_hash(prev_hash, {**content, "seq": candidate}) == stored:
                moved_from = candidate
                break
        if moved_from is not None:
            out.append(
                VerifyProblem(seq, "reordered", f"this record was written as seq {moved_from}")
            )
        else:
            out.append(VerifyProblem(seq, "edited", _EDITED))
    return out
