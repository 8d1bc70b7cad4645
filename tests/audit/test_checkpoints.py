"""Checkpoints (seq and hash of the head, sent to the sinks every N records and at
shutdown) let `audit verify --checkpoints FILE` catch truncation and a rewritten tail
without a head kept by hand; missing append-only guards make `audit verify` fail."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from logtorukun import cli
from logtorukun.audit import AuditStore
from logtorukun.audit.records import record_hash
from logtorukun.audit.sinks import JsonlSink
from logtorukun.audit.verify import parse_checkpoints

from .test_store import fill, tamper

pytestmark = pytest.mark.usefixtures("only_audit_commands")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    path.write_text('[server]\ndatabase = "logtorukun.db"\n')
    return path


def verify(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str]:
    code = cli.main(["--config", str(config), "audit", "verify", *argv])
    out, err = capsys.readouterr()
    return code, out + err


def _store(tmp_path: Path, every: int = 5) -> tuple[AuditStore, Path]:
    copy = tmp_path / "siem.jsonl"
    return AuditStore(
        tmp_path / "logtorukun.db", sinks=[JsonlSink(copy)], checkpoint_every=every
    ), copy


def test_checkpoints_every_n_records_and_at_shutdown(tmp_path: Path) -> None:
    store, copy = _store(tmp_path)
    refs = fill(store, 12)
    assert store.write_checkpoint("shutdown") == refs[-1]
    store.close()
    points = [
        json.loads(x)["checkpoint"] for x in copy.read_text().splitlines() if "checkpoint" in x
    ]
    assert [(p["seq"], p["reason"]) for p in points] == [
        (5, "every 5 records"),
        (10, "every 5 records"),
        (12, "shutdown"),
    ]
    assert [p["hash"] for p in points] == [refs[4].hash, refs[9].hash, refs[11].hash]


def test_verify_against_checkpoints_catches_truncation_and_rewrites(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    store, copy = _store(tmp_path)
    fill(store, 12)
    store.write_checkpoint()
    store.close()
    # Only the checkpoint lines, as a syslog daemon would have written them.
    syslog = tmp_path / "auth.log"
    syslog.write_text(
        "".join(
            f"Nov 28 07:00:00 web logtorukun[42]: audit-checkpoint {x}\n"
            for x in copy.read_text().splitlines()
            if x.startswith('{"checkpoint"')
        )
        + "Nov 28 07:00:01 web sshd[7]: unrelated { line\n"
    )
    assert len(parse_checkpoints(syslog.read_text().splitlines())) == 3
    db = tmp_path / "logtorukun.db"
    code, out = verify(capsys, config, "--checkpoints", str(syslog))
    assert code == 0 and "checked against 3 checkpoint(s)" in out
    # A careful truncation: the last 4 records and sqlite_sequence's memory of them.
    tamper(
        db,
        "DELETE FROM audit_log WHERE seq > 8",
        "UPDATE sqlite_sequence SET seq = 8 WHERE name = 'audit_log'",
    )
    assert verify(capsys, config)[0] == 0  # the chain alone cannot tell
    code, out = verify(capsys, config, "--checkpoints", str(syslog))
    assert code == 1
    assert "a checkpoint names seq 12 but the store ends at seq 8" in out
    # A rewritten, re-hashed record under a checkpoint.
    conn = sqlite3.connect(db)
    (prev,) = conn.execute("SELECT prev_hash FROM audit_log WHERE seq = 5").fetchone()
    conn.close()
    with AuditStore(db, readonly=True) as ro:
        rec = ro.query(after_seq=4, order="asc", limit=1)[0]
    forged = record_hash(prev, rec.content() | {"user": "nobody"})
    tamper(db, "UPDATE audit_log SET user = 'nobody', hash = ? WHERE seq = 5", params=(forged,))
    code, out = verify(capsys, config, "--checkpoints", str(copy))
    assert code == 1 and "seq 5: edited: hash" in out and "differs from checkpoint" in out


def test_verify_fails_when_the_guards_are_missing(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    with AuditStore(tmp_path / "logtorukun.db") as store:
        fill(store, 3)
    assert verify(capsys, config)[0] == 0
    conn = sqlite3.connect(tmp_path / "logtorukun.db")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    conn.close()
    code, out = verify(capsys, config)
    assert code == 1
    assert "guard missing: trigger audit_log_no_delete is missing" in out
    assert out.splitlines()[-1].startswith("audit store UNGUARDED: 1 problem(s) in 3 records")


def test_a_checkpoints_file_that_holds_none_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    with AuditStore(tmp_path / "logtorukun.db") as store:
        fill(store, 2)
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    code, out = verify(capsys, config, "--checkpoints", str(empty))
    assert code == 2 and "holds no checkpoint or record" in out
    code, out = verify(capsys, config, "--checkpoints", str(tmp_path / "missing.log"))
    assert code == 2 and "No such file" in out
