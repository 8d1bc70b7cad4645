"""journalctl through the gate against a real journal: no stub, no systemd running.

Debian's `systemd-journal-remote` writes real journal files from export-format entries
(units, priorities, messages and timestamps chosen here), and the policy's
`[programs] journalctl = ["/usr/bin/journalctl", "--directory=DIR"]` points the real
journalctl at them. Tail, `-p`, `--since`, `-g` and follow through a real sshd; a unit
that is not allowed and match expressions smuggled in a unit name are refused and
audited. journalctl runs under the policy's max_memory like every child.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.gate.errors import Exit
from tests.gate.test_bridge import BridgeClient
from tests.support.sshd import USER, Worker

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
BASE_US = 1_734_440_000_000_000  # 2024-12-17 12:53:20 UTC
UNIT = "worker-service"


def entries(first: int, count: int, *, unit: str = UNIT, text: str = "message") -> bytes:
    """Export-format entries one second apart, from BASE + `first` seconds."""
    out = []
    for i in range(first, first + count):
        out.append(
            f"__REALTIME_TIMESTAMP={BASE_US + i * 1_000_000}\n__MONOTONIC_TIMESTAMP={1000 + i}\n"
            f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}.service\n"
            f"PRIORITY={3 if i % 5 == 0 else 6}\nSYSLOG_IDENTIFIER=app\n_HOSTNAME=w1\n"
            f"MESSAGE={text} {i} of {unit}\n\n"
        )
    return "".join(out).encode()


def write_journal(directory: Path, name: str, data: bytes) -> None:
    """Run systemd-journal-remote as the gate user, so the files it makes (0640) are its."""
    out = subprocess.run(
        [JOURNAL_REMOTE, "-o", str(directory / name), "-"],
        input=data,
        capture_output=True,
        user=USER,
        check=False,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def jw() -> Iterator[Worker]:
    w = Worker(name="journal")
    try:
        journal = w.dir / "journal"
        journal.mkdir(mode=0o755)
        pw = pwd.getpwnam(USER)
        os.chown(journal, pw.pw_uid, pw.pw_gid)
        mixed = b"".join(
            entries(i, 1, unit=UNIT if i % 2 == 0 else "other-service") for i in range(40)
        )
        write_journal(journal, "remote.journal", mixed)
        w.write_policy(
            w.default_policy()
            + f'\n[programs]\njournalctl = ["/usr/bin/journalctl", "--directory={journal}"]\n'
            + f'\n[[journal]]\nunit = "{UNIT}"\n'
        )
        w.start()
        yield w
    finally:
        w.destroy()


def ok(w: Worker, command: str) -> list[str]:
    out = w.ssh(command)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    return out.stdout.decode().splitlines()


def test_tail_of_a_unit(jw: Worker) -> None:
    assert ok(jw, f"journalctl -u {UNIT} -n 3 -o cat") == [
        f"message {i} of {UNIT}" for i in (34, 36, 38)
    ]
    short = ok(jw, f"journalctl -u {UNIT}.service -n 1 -o short-iso")
    assert short == [f"2024-12-17T12:53:58+0000 w1 app: message 38 of {UNIT}"]


def test_priority_since_and_grep(jw: Worker) -> None:
    assert ok(jw, f"journalctl -u {UNIT} -p err -o cat") == [
        f"message {i} of {UNIT}" for i in (0, 10, 20, 30)
    ]
    since = ok(jw, f"journalctl -u {UNIT} --since '2024-12-17 12:53:50' -o cat")
    assert since == [f"message {i} of {UNIT}" for i in (30, 32, 34, 36, 38)]
    assert ok(jw, f"journalctl -u {UNIT} -g 'message 1[0-9] ' -o cat") == [
        f"message {i} of {UNIT}" for i in (10, 12, 14, 16, 18)
    ]


def test_follow_sees_new_entries(jw: Worker) -> None:
    s = BridgeClient(jw.ssh_argv("bridge"))
    s.request(1, f"journalctl -u {UNIT} -f -n 1 -o cat")
    first = s.data_until(1, len(f"message 38 of {UNIT}\n"))
    assert first == f"message 38 of {UNIT}\n".encode()
    live = jw.dir / "journal" / "live.journal"
    try:
        write_journal(live.parent, live.name, entries(100, 3, text="live"))
        want = "".join(f"live {i} of {UNIT}\n" for i in (100, 101, 102)).encode()
        assert s.data_until(1, len(want)) == want
        s.send(2, 1)  # CANCEL
        _data, end = s.result(1)
        assert end["reason"] == "client went away"
        assert s.close() == (0, b"")
    finally:
        live.unlink(missing_ok=True)  # the module's other tests read the journal as made


@pytest.mark.parametrize(
    ("command", "code", "reason"),
    [
        ("journalctl -u other-service -n 5", Exit.REFUSED, "unit 'other-service' is not allowed"),
        ("journalctl -u sshd -n 5", Exit.REFUSED, "is not allowed"),
        # a unit name is compared whole with the allow-list: a match inside it is no unit
        (
            f"journalctl -u '{UNIT} _SYSTEMD_UNIT=other-service.service'",
            Exit.REFUSED,
            "not allowed",
        ),
        ("journalctl -u _SYSTEMD_UNIT=other-service.service", Exit.REFUSED, "not allowed"),
        (f"journalctl -u {UNIT} _SYSTEMD_UNIT=other-service.service", Exit.BAD_REQUEST, "match"),
        (f"journalctl -u {UNIT}+other-service", Exit.REFUSED, "is not allowed"),
    ],
)
def test_other_units_and_smuggled_matches_are_refused(
    jw: Worker, command: str, code: int, reason: str
) -> None:
    before = len(jw.audit_records())
    out = jw.ssh(command)
    assert out.returncode == code, out.stderr
    assert out.stdout == b"" and reason.encode() in out.stderr
    (deny,) = jw.audit_records()[before:]
    assert deny["decision"] == "deny" and deny["exit"] == code
