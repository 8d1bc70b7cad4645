"""`logtorukun sources|tail|grep|follow|hosts` against real workers, run in-process."""

from __future__ import annotations

import argparse
import asyncio
import io
from dataclasses import replace
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.cli.logs import Printer, grep_hosts
from logtorukun.client import Client
from logtorukun.client.command_line import line_for
from logtorukun.config import HostConfig
from logtorukun.gate.vocabulary import Grep
from tests.client.helpers import FAST, host_for, write_config
from tests.conftest import MakeWorker
from tests.support.sshd import Worker

EVIL = (
    "2024-12-17 16:00:00 ERROR title \x1b]0;pwned\x07 clear \x1b[2J\x1b[H"
    " red \x1b[31mRED\x1b[0m cr \roverwrite csi \u009b31m bidi \u202eevil"
    " bell \x07 del \x7f end\n"
).encode() + b"bad utf8 \xff\xfe end\n"


async def cli(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it has its own event loop), return (code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _dead(tmp_path: Path, like: HostConfig) -> HostConfig:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return replace(like, name="dead", port=port, connect_timeout=2.0, labels=())


@pytest.fixture
def config(tmp_path: Path, worker: Worker, mine: Worker) -> Path:
    hosts = [
        host_for(worker, "web1", labels=("prod",)),
        host_for(mine, "web2", labels=("prod",)),
    ]
    hosts.append(_dead(tmp_path, hosts[0]))
    return write_config(tmp_path / "server.toml", hosts)


async def test_tail_prints_the_lines(
    capsys: pytest.CaptureFixture[str], config: Path, worker: Worker
) -> None:
    code, out, err = await cli(capsys, config, "tail", "web1", str(worker.app_log), "-n", "7")
    want = worker.app_log.read_text().splitlines(keepends=True)[-7:]
    assert (code, out, err) == (0, "".join(want), "")


async def test_log_text_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str], config: Path, mine: Worker
) -> None:
    evil = mine.root / "evil.log"
    evil.write_bytes(EVIL)
    try:
        code, out, _ = await cli(capsys, config, "tail", "web2", str(evil), "-n", "5")
        assert code == 0
        assert not any(c in out for c in "\x1b\x07\r\x7f\u009b\u202e")
        assert "title ^[]0;pwned^G clear ^[[2J^[[H" in out and "cr ^Moverwrite" in out
        assert "<U+009B>31m" in out and "<U+202E>evil" in out and "del ^? end" in out
        assert "bad utf8 \\xff\\xfe end" in out and out.count("\n") == 2

        code, out, _ = await cli(capsys, config, "tail", "web2", str(evil), "-n", "5", "--color")
        assert "\x1b[31mRED\x1b[0m" in out  # SGR colours survive with --color ...
        assert "^[]0;pwned^G" in out and "^[[2J" in out  # ... nothing else does
        assert out.split("\n")[0].endswith("\x1b[0m")  # and the colour ends with the line

        code, out, _ = await cli(capsys, config, "grep", "--hosts", "web2", str(evil), "ERROR")
        assert out.startswith("web2: 2024-12-17 16:00:00 ERROR title ^[]0;pwned^G")
        assert out.count("\n") == 1 and "cr ^Moverwrite" in out  # a CR does not end a line
    finally:
        evil.unlink()


async def test_raw_output_is_the_bytes(mine: Worker) -> None:
    evil = mine.root / "evil.log"
    evil.write_bytes(EVIL)
    try:
        buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        printer = Printer(argparse.Namespace(raw=True), buf)
        async with Client([host_for(mine)], options=FAST) as c:
            printer.write((await c.tail("w", str(evil), 5)).data)
        assert buf.buffer.getvalue() == EVIL
    finally:
        evil.unlink()


def test_raw_is_refused_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    with pytest.raises(Exception, match="not to a terminal"):
        Printer(argparse.Namespace(raw=True), Tty())


async def test_grep_across_hosts_survives_a_dead_one(
    capsys: pytest.CaptureFixture[str], config: Path, worker: Worker, mine: Worker
) -> None:
    assert worker.app_log.relative_to(worker.dir) == mine.app_log.relative_to(mine.dir)
    # Each worker has its own root; the path is per host, so ask each for its own file:
    # the same PATH only exists on one of them (the other refuses it, and says so).
    code, out, err = await cli(
        capsys, config, "grep", "--hosts", "web*,dead", str(worker.app_log), "charge failed"
    )
    want = [ln for ln in worker.app_log.read_text().splitlines() if "charge failed" in ln]
    assert code == 1
    assert out.splitlines() == [f"web1: {ln}" for ln in want]
    assert "logtorukun: dead: cannot connect to" in err and "connection refused" in err
    assert "logtorukun: web2: refused by the gate (gate exit 3)" in err
    assert f"grep: 3 hosts, 1 answered, 2 failed (web2, dead), {len(want)} lines" in err


async def test_grep_by_label_in_parallel(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make_worker: MakeWorker
) -> None:
    a, b, c = (make_worker(name=n) for n in ("la", "lb", "lc"))
    shared = a.dir / "shared"  # one log root both workers' policies point at
    shared.mkdir(mode=0o755)
    (shared / "same.log").write_text("hello 1\nnothing\nhello 2\n")
    (shared / "same.log").chmod(0o644)
    for w in (a, b):
        w.write_policy(w.default_policy().replace(str(w.root), str(shared)))
    hosts = [host_for(a, "a", labels=("db",)), host_for(b, "b", labels=("db",)), host_for(c, "c")]
    config = write_config(tmp_path / "server.toml", hosts)
    code, out, err = await cli(
        capsys, config, "grep", "--hosts", "label:db", str(shared / "same.log"), "hello"
    )
    # A run that lasts over a second (two cold SSH connections on a loaded machine) shows
    # progress on stderr, then a summary; a quick one shows nothing. No other line.
    progress = [ln for ln in err.splitlines() if ln.startswith("logtorukun: grep: [")]
    summary = ["logtorukun: grep: 2 hosts, 2 answered, 0 failed, 4 lines"] if progress else []
    assert (code, err.splitlines()) == (0, progress + summary), err
    assert sorted(out.splitlines()) == ["a: hello 1", "a: hello 2", "b: hello 1", "b: hello 2"]
    # per host, the lines keep their order
    assert [ln for ln in out.splitlines() if ln.startswith("b:")] == ["b: hello 1", "b: hello 2"]


async def test_progress_on_stderr_for_long_runs(
    capsys: pytest.CaptureFixture[str], worker: Worker
) -> None:
    hosts = [host_for(worker, "web1")]
    printer = Printer(argparse.Namespace(), io.StringIO())
    async with Client(hosts, options=FAST) as c:
        command = line_for(Grep(str(worker.app_log), "INFO"))
        assert await grep_hosts(c, hosts, command, printer, progress_after=0) == 0
    err = capsys.readouterr().err
    assert "logtorukun: grep: [0/1 hosts]" in err
    assert "grep: 1 hosts, 1 answered, 0 failed" in err and printer.lines > 100


async def test_single_host_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], config: Path, worker: Worker
) -> None:
    code, out, err = await cli(capsys, config, "tail", "dead", "/var/log/x.log")
    assert code == 255 and out == "" and err.count("\n") == 1
    assert err.startswith("logtorukun: dead: cannot connect to")
    code, out, err = await cli(capsys, config, "tail", "web1", str(worker.secret_path))
    assert code == 3 and "not allowed by the policy" in err and "Traceback" not in err
    code, out, err = await cli(capsys, config, "tail", "nope", "/var/log/x.log")
    assert code == 2 and "unknown host 'nope'" in err


async def test_truncated_output_is_shown_then_exit_5(
    capsys: pytest.CaptureFixture[str], config: Path, worker: Worker
) -> None:
    with worker.policy(worker.default_policy(max_lines=3)):
        code, out, err = await cli(capsys, config, "tail", "web1", str(worker.app_log))
    assert code == 5 and out.count("\n") == 3
    assert "limit hit (gate exit 5): asked for 200 lines; max_lines is 3" in err


async def test_follow_until_the_gate_stops_it(
    capsys: pytest.CaptureFixture[str], config: Path, mine: Worker
) -> None:
    with mine.policy(mine.default_policy(follow_max_seconds=1)):
        code, out, err = await cli(capsys, config, "follow", "web2", str(mine.app_log), "-n", "2")
    assert code == 0 and out.count("\n") == 2
    assert "output truncated: follow stopped after 1 s" in err


async def test_sources(capsys: pytest.CaptureFixture[str], config: Path, worker: Worker) -> None:
    code, out, _ = await cli(capsys, config, "sources", "web1")
    assert code == 0 and out.startswith("# web1: gate ")
    assert str(worker.app_log) in out and "notes.txt" not in out


async def test_hosts_check(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = await cli(capsys, config, "hosts", "check")
    lines = out.splitlines()
    assert code == 1 and lines[0].split() == [
        "HOST",
        "ADDRESS",
        "GATE",
        "MS",
        "FINGERPRINT",
        "STATUS",
    ]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert rows["web1"].endswith(" ok") and " SHA256:" in rows["web1"] and " 0." in rows["web1"]
    assert "unreachable: cannot connect" in rows["dead"]
    code, out, _ = await cli(capsys, config, "hosts", "check", "label:prod")
    assert code == 0 and "dead" not in out


async def test_hosts_trust(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make_worker: MakeWorker
) -> None:
    w = make_worker(name="trust")
    kh = tmp_path / "kh" / "known_hosts"
    config = write_config(tmp_path / "server.toml", [host_for(w, known_hosts=kh)])
    pub = w.host_key.with_name(w.host_key.name + ".pub").read_text().split()

    code, out, _ = await cli(capsys, config, "hosts", "trust", "w")
    assert code == 1 and "not written" in out and not kh.exists()
    fingerprint = out.split(" key ")[1].split()[0]
    assert fingerprint.startswith("SHA256:")

    code, _, err = await cli(capsys, config, "hosts", "trust", "w", "--fingerprint", "SHA256:x")
    assert code == 2 and "fingerprint mismatch" in err and not kh.exists()

    code, out, _ = await cli(capsys, config, "hosts", "trust", "w", "--fingerprint", fingerprint)
    assert code == 0 and kh.read_text() == f"[127.0.0.1]:{w.port} {pub[0]} {pub[1]}\n"
    code, out, _ = await cli(capsys, config, "tail", "w", str(w.app_log), "-n", "1")
    assert code == 0 and out.count("\n") == 1
    code, out, _ = await cli(capsys, config, "hosts", "trust", "w", "--yes")
    assert code == 0 and "already trusted" in out and kh.read_text().count("\n") == 1

    w.regenerate_host_key()
    code, out, err = await cli(capsys, config, "hosts", "trust", "w", "--yes")
    assert code == 255 and "already holds another key" in err and "ssh-keygen -R" in err
    assert kh.read_text().count("\n") == 1  # never replaced
