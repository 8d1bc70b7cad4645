"""CLI parity with the API: time windows, journal and docker, "no matches", and
"did you mean" for commands and hosts (in-process, against real workers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.ops.demo import cli_command
from tests.client.test_cli import cli, config  # noqa: F401  (the fixture)
from tests.support.sshd import Worker

WINDOW = [
    "2024-12-17 13:59:59 INFO before the window\n",
    "2024-12-17 14:00:00 ERROR in the window: disk full\n",
    "2024-12-17 14:10:00 INFO in the window: all good\n",
    "2024-12-17 15:00:00 ERROR after the window\n",
]


@pytest.fixture
def timed(mine: Worker) -> Path:
    path = mine.root / "timed.log"
    path.write_text("".join(WINDOW))
    path.chmod(0o644)
    return path


async def test_tail_and_grep_in_a_time_window(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811
    timed: Path,
) -> None:
    args = ("--since", "2024-12-17 14:00", "--until", "2024-12-17 15")
    code, out, err = await cli(capsys, config, "tail", "web2", str(timed), *args)
    assert (code, out, err) == (0, "".join(WINDOW[1:3]), "")
    code, out, err = await cli(capsys, config, "grep", "web2", str(timed), "ERROR", *args)
    assert (code, out, err) == (0, WINDOW[1], "")
    code, out, _ = await cli(capsys, config, "grep", "-c", "-i", "web2", str(timed), "error", *args)
    assert (code, out) == (0, "1\n")
    code, out, err = await cli(capsys, config, "tail", "web2", str(timed), "--since", "tomorrow")
    assert code == 2 and out == "" and "--since: 'tomorrow' is not a time" in err


async def test_grep_without_a_match_says_so_and_exits_1(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811
    timed: Path,
) -> None:
    code, out, err = await cli(capsys, config, "grep", "web2", str(timed), "no-such-text")
    assert (code, out, err) == (1, "", "logtorukun: no matches\n")
    code, out, err = await cli(capsys, config, "grep", "-c", "web2", str(timed), "no-such-text")
    assert (code, out, err) == (1, "0\n", "")


async def test_follow_since_prints_the_window_then_follows_from_its_end(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811
    mine: Worker,
    timed: Path,
) -> None:
    with mine.policy(mine.default_policy(follow_max_seconds=1)):
        code, out, err = await cli(
            capsys, config, "follow", "web2", str(timed), "--since", "2024-12-17 14:00"
        )
    assert code == 0 and out == "".join(WINDOW[1:])  # each line once
    assert "follow stopped after 1 s" in err


async def test_journal_and_docker_commands_reach_the_gate(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811
) -> None:
    code, out, err = await cli(capsys, config, "journal", "web2", "worker-service", "--since", "1h")
    assert code == 3 and out == "" and "unit 'worker-service' is not allowed" in err
    code, out, err = await cli(capsys, config, "docker", "web2", "app", "-n", "5", "-t")
    assert code == 3 and "container 'app' is not allowed" in err and "Traceback" not in err


async def test_did_you_mean(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811
) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["tial", "web1", "/var/log/x.log"])
    assert exc.value.code == 2
    assert "unknown command 'tial'; did you mean 'tail'?" in capsys.readouterr().err
    code, _, err = await cli(capsys, config, "tail", "wbe1", "/var/log/x.log")
    assert code == 2 and "unknown host 'wbe1'; did you mean 'web1'?" in err
    code, _, err = await cli(capsys, config, "grep", "--hosts", "wbe*", "/var/log/x.log", "x")
    assert code == 2 and "no host matches 'wbe*'" in err


def test_the_demo_prints_a_command_that_works_without_the_venv() -> None:
    cmd = cli_command()
    assert cmd.startswith("/") and Path(cmd.split()[0]).is_file()
    assert Path(cmd.split()[0]).parent == Path(sys.executable).parent
