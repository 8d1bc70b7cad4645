"""Every verb that reads a `.gz` gives exactly what `gzip -dc` gives.

Single- and multi-member files, with members larger and smaller than the inflate chunk
(`readers.CHUNK`), NUL padding and garbage after the last member (which gzip ignores);
corrupt and truncated data end with exit 9 and one clear line. Runs `serve` in-process
with the real gzip and grep.
"""

from __future__ import annotations

import gzip
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logtorukun.gate import readers
from logtorukun.gate.errors import Exit
from tests.gate.test_runner import Env

BIG = 10**9


def stamped(first: int, count: int, seed: int) -> bytes:
    """`count` lines stamped one second apart from 2024-12-15 00:00:00 + `first` s."""
    rng = random.Random(seed)
    out = []
    for i in range(first, first + count):
        h, m, s = i // 3600 % 24, i // 60 % 60, i % 60
        out.append(f"2024-12-15 {h:02}:{m:02}:{s:02} line {i} {'x' * rng.randint(0, 90)}\n")
    return "".join(out).encode()


# (name, members as line counts): 30000 lines is ~2 MiB, twice the inflate chunk.
SHAPES = {
    "single-big": [30000],
    "big-then-small": [30000, 50],
    "small-then-big": [50, 30000],
    "big-big": [20000, 20000],
    "many-small": [7, 1, 300, 2],
}


def build(root: Path, name: str, sizes: list[int], tail: bytes = b"") -> bytes:
    members, first = [], 0
    for i, n in enumerate(sizes):
        members.append(gzip.compress(stamped(first, n, i), compresslevel=1 + i % 9, mtime=0))
        first += n
    path = root / f"{name}.log.1.gz"
    path.write_bytes(b"".join(members) + tail)
    path.chmod(0o644)
    out = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=False)
    assert out.returncode in (0, 2), out.stderr  # 2: "trailing garbage ignored"
    return out.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("gzip-exact"))


@pytest.fixture(scope="module")
def files(env: Env) -> Iterator[dict[str, bytes]]:
    made = {name: build(env.root, name, sizes) for name, sizes in SHAPES.items()}
    made["padded"] = build(env.root, "padded", [30000, 40], b"\0" * 5000)
    made["garbage"] = build(env.root, "garbage", [40, 30000], b"trailing garbage\n")
    yield made


def run(env: Env, command: str) -> tuple[int, bytes, str]:
    result, data, _ = env.run(command, env.policy(max_lines=BIG, max_bytes=BIG))
    return result.exit, data, result.reason


@pytest.mark.parametrize("name", [*SHAPES, "padded", "garbage"])
def test_every_verb_matches_gzip_dc(env: Env, files: dict[str, bytes], name: str) -> None:
    want = files[name]
    lines = want.splitlines(keepends=True)
    path = env.root / f"{name}.log.1.gz"
    assert len(want) > readers.CHUNK or name == "many-small"
    assert run(env, f"cat {path}") == (Exit.OK, want, "")
    assert run(env, f"head -n {len(lines) - 3} {path}") == (Exit.OK, b"".join(lines[:-3]), "")
    assert run(env, f"tail -n {len(lines) - 5} {path}") == (Exit.OK, b"".join(lines[5:]), "")
    assert run(env, f"tail -n 7 {path}") == (Exit.OK, b"".join(lines[-7:]), "")
    matching = [ln for ln in lines if b" line 1" in ln]
    assert run(env, f"grep ' line 1' {path}") == (Exit.OK, b"".join(matching), "")
    assert run(env, f"grep -c ' line 1' {path}") == (Exit.OK, b"%d\n" % len(matching), "")
    window = [ln for ln in lines if b"2024-12-15 00:10:00" <= ln[:19] < b"2024-12-15 02:00:00"]
    got = run(env, f"range --since '2024-12-15 00:10' --until '2024-12-15 02:00' {path}")
    assert got == (Exit.OK, b"".join(window), "")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[: len(b) // 2], "the compressed file is truncated"),
        (lambda b: b[:-8] + bytes(x ^ 0xFF for x in b[-8:-4]) + b[-4:], "not valid gzip data"),
        (lambda b: b[:20] + bytes(x ^ 0x55 for x in b[20:60]) + b[60:], "not valid gzip data"),
    ],
)
@pytest.mark.parametrize(
    "verb", ["cat", "tail -n 5", "head -n 999999", "grep -c line", "range --since 2024-12-15"]
)
def test_corrupt_or_truncated_ends_with_exit_9(
    env: Env, damage: Callable[[bytes], bytes], reason: str, verb: str
) -> None:
    data = gzip.compress(stamped(0, 30000, 1), mtime=0)
    path = env.root / "damaged.log.3.gz"
    path.write_bytes(damage(data))
    path.chmod(0o644)
    code, _, why = run(env, f"{verb} {path}")
    assert code == Exit.FAILED, why
    if verb.startswith("grep"):
        assert why.startswith("gzip failed: gzip: stdin:"), why
    else:
        assert reason in why, why
