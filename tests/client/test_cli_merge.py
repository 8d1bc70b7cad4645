"""`logtorukun merge`: several logs interleaved by time from a shell, against real workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client.helpers import host_for, write_config
from tests.client.test_cli import _dead, cli
from tests.support.sshd import Worker

A = ["2024-12-17 14:00:01 INFO a1", "2024-12-17 14:00:03 ERROR a2", "    at x()"]
B = ['{"ts":"2024-12-17T14:00:02Z","msg":"b1"}', "2024-12-17T23:00:04+09:00 INFO b2"]


@pytest.fixture
def config(tmp_path: Path, worker: Worker, mine: Worker) -> Path:
    hosts = [host_for(worker, "web1"), host_for(mine, "web2")]
    hosts.append(_dead(tmp_path, hosts[0]))
    return write_config(tmp_path / "server.toml", hosts)


@pytest.fixture
def two(mine: Worker, request: pytest.FixtureRequest) -> list[Path]:
    paths = []
    for name, lines in (("a", A), ("b", B)):
        p = mine.root / f"{request.node.name[:30]}-{name}.log"
        p.write_text("\n".join(lines) + "\n")
        p.chmod(0o644)
        paths.append(p)
    return paths


async def test_merge_interleaves_by_time_with_labels(
    capsys: pytest.CaptureFixture[str], config: Path, two: list[Path]
) -> None:
    a, b = (f"web2:{p}" for p in two)
    code, out, err = await cli(capsys, config, "merge", a, b)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{a} {A[0]}",
        f"{b} {B[0]}",
        f"{a} {A[1]}",
        f"{a} {A[2]}",  # the continuation line stays with its error
        f"{b} {B[1]}",
    ]
    code, out, _ = await cli(capsys, config, "merge", "-n", "2", a, b)
    assert out.splitlines() == [f"{a} {A[2]}", f"{b} {B[1]}"]


async def test_merge_reports_a_failed_source_and_prints_the_others(
    capsys: pytest.CaptureFixture[str], config: Path, two: list[Path]
) -> None:
    a = f"web2:{two[0]}"
    code, out, err = await cli(capsys, config, "merge", a, f"dead:{two[1]}")
    assert code == 1 and out.splitlines() == [f"{a} {line}" for line in A]
    assert err.startswith(f"logtorukun: dead:{two[1]}: ")


async def test_merge_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str], config: Path, two: list[Path]
) -> None:
    code, out, err = await cli(capsys, config, "merge", "web2")
    assert code != 0 and out == "" and "is not HOST:SOURCE" in err and len(err.splitlines()) == 1
    many = [f"web2:{two[0]}"] * 9
    code, _, err = await cli(capsys, config, "merge", *many)
    assert code != 0 and "at most 8 sources" in err
