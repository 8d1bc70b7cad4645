"""`logtorukun audit ...` through the real entry point, with a config file in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from logtorukun import cli
from logtorukun.audit import AuditStore

from .test_store import fill, swap_sql, tamper

pytestmark = pytest.mark.usefixtures("only_audit_commands")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    path.write_text('[server]\ndatabase = "state/logtorukun.db"\n')
    (tmp_path / "state").mkdir()
    return path


@pytest.fixture
def db(config: Path) -> Path:
    return config.parent / "state" / "logtorukun.db"


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(config), "audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_ok(capsys: pytest.CaptureFixture[str], config: Path, db: Path) -> None:
    with AuditStore(db) as s:
        refs = fill(s, 4)
    code, out, _ = run(capsys, config, "verify")
    assert code == 0
    assert out == f"audit chain OK: 4 records, head 4 {refs[-1].hash}\n"


@pytest.mark.parametrize(
    ("statements", "seq", "kind"),
    [
        (("UPDATE audit_log SET host = 'elsewhere' WHERE seq = 6",), 6, "edited"),
        (("DELETE FROM audit_log WHERE seq = 6",), 6, "deleted"),
        (swap_sql(4, 7), 4, "reordered"),
    ],
    ids=["edit", "delete", "reorder"],
)
def test_verify_names_the_tampered_record(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    db: Path,
    statements: tuple[str, ...],
    seq: int,
    kind: str,
) -> None:
    with AuditStore(db) as s:
        fill(s, 10)
    tamper(db, *statements)
    code, out, _ = run(capsys, config, "verify")
    assert code == 1
    lines = out.splitlines()
    problems = [x for x in lines if x.startswith("seq ")]
    assert problems[0].startswith(f"seq {seq}: {kind}: ")
    if kind == "reordered":
        assert problems[1].startswith("seq 7: reordered: ")
        assert len(problems) == 2
    else:
        assert len(problems) == 1
    assert lines[-1].startswith(f"audit chain BROKEN: first bad seq {seq};")


def test_expect_head_catches_truncation(
    capsys: pytest.CaptureFixture[str], config: Path, db: Path
) -> None:
    with AuditStore(db) as s:
        fill(s, 6)
    code, out, _ = run(capsys, config, "head")
    anchor = out.strip()
    assert code == 0 and anchor.startswith("6:")
    tamper(
        db,
        "DELETE FROM audit_log WHERE seq > 4",
        "UPDATE sqlite_sequence SET seq = 4 WHERE name = 'audit_log'",
    )
    assert run(capsys, config, "verify")[0] == 0  # the chain alone cannot tell
    code, out, _ = run(capsys, config, "verify", "--expect-head", anchor)
    assert code == 1
    assert [x for x in out.splitlines() if x.startswith("seq ")] == [
        "seq 5: deleted: expected head seq 6 but the store ends at seq 4 "
        "(the last records were removed)"
    ]


def test_export_jsonl_and_csv(
    capsys: pytest.CaptureFixture[str], config: Path, db: Path, tmp_path: Path
) -> None:
    with AuditStore(db) as s:
        fill(s, 3)
        s.append("refused", user="=cmd|' /C calc'!A0", reason='a, "b"\nc', decision="deny")
    code, out, _ = run(capsys, config, "export", "--format", "jsonl")
    assert code == 0
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [1, 2, 3, 4]

    target = tmp_path / "export.csv"
    code, out, err = run(
        capsys, config, "export", "--format", "csv", "--since", "1d", "--output", str(target)
    )
    assert code == 0 and out == "" and err == f"exported 4 records to {target}\n"
    assert target.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(target.open(newline="")))
    assert rows[3]["user"] == "'=cmd|' /C calc'!A0" and rows[3]["reason"] == 'a, "b"\nc'

    code, out, _ = run(capsys, config, "export", "--since", "2999-01-01")
    assert code == 0 and out == ""


def test_tail_is_readable_and_terminal_safe(
    capsys: pytest.CaptureFixture[str], config: Path, db: Path
) -> None:
    with AuditStore(db) as s:
        fill(s, 5)
        ref = s.append(
            "read",
            user="alice",
            client="192.0.2.1",
            user_agent="evil\x1b]0;pwned\x07",
            action="grep",
            host="web1",
            source="/var/log/app.log",
            params={"pattern": "\x1b[31mred"},
            decision="allow",
        )
        s.finish(ref, "read_end", {"bytes": 10, "lines": 1})
    code, out, _ = run(capsys, config, "tail", "-n", "2")
    assert code == 0
    first, second = out.splitlines()
    assert " #6 read allow alice@192.0.2.1 grep web1:/var/log/app.log " in first
    assert "\x1b" not in out and "\\x1b[31mred" in first
    assert (
        " #7 read_end alice@192.0.2.1 grep web1:/var/log/app.log -> #6 bytes=10 lines=1" in second
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("verify", "--expect-head", "12"), "--expect-head: '12' is not SEQ:HASH"),
        (("export", "--since", "last tuesday"), "--since: 'last tuesday' is not a time"),
        (("export", "--output", "/nonexistent/dir/x.csv"), "--output /nonexistent/dir/x.csv"),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], config: Path, db: Path, argv: tuple[str, ...], needle: str
) -> None:
    with AuditStore(db) as s:
        fill(s, 1)
    code, out, err = run(capsys, config, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"logtorukun: {needle}") and err.count("\n") == 1


def test_missing_database_is_an_error_not_an_empty_store(
    capsys: pytest.CaptureFixture[str], config: Path, db: Path
) -> None:
    code, out, err = run(capsys, config, "verify")
    assert code == 2 and out == ""
    assert err.startswith(f"logtorukun: {db}: no audit database there") and err.count("\n") == 1
    assert not db.exists()


def test_missing_config_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, tmp_path / "nope.toml", "tail")
    assert code == 2 and "config file not found" in err and err.count("\n") == 1
