"""Attacks through a real sshd: every one refused by the gate, and no byte of the secret out.

The worker's secret file lies outside the log root but is readable by the gate user, so
each refusal here was the gate's decision, not the file system's. Each case asserts the
exit code, the one-line reason on stderr, an empty stdout (so no secret byte), and the
matching `deny` record in the audit file.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from logtorukun.gate.errors import Exit
from logtorukun.gate.protocol import END, REQUEST, FrameReader, pack
from tests.conftest import MakeWorker
from tests.support.sshd import Worker
from tests.support.swap import SWAPPER

FAKE = """#!/bin/sh
# stands in for journalctl / sudo docker: shows the argv the gate built, one per line
for a in "$@"; do printf '[%s]\\n' "$a"; done
"""

GOOD = b"2024-12-17 14:00:00 INFO  [swap] the regular file\n" * 3


class Attacked(Worker):
    """A worker whose log root is full of traps, all pointing at secrets."""

    def plant(self) -> None:
        root, marker = self.root, self.secret_marker.encode() + b"\n"
        self.outside = self.dir / "outside"
        self.outside.mkdir(mode=0o755)
        (self.outside / "app.log").write_bytes(marker)
        sibling = self.dir / "var/log/worker-secrets"
        sibling.mkdir(mode=0o755)
        (sibling / "app.log").write_bytes(marker)
        (root / "link.log").symlink_to(self.secret_path)
        (root / "rel.log").symlink_to("../../../secret/shadow")
        (root / "outdir").symlink_to(self.outside)
        (root / "proc.log").symlink_to(f"/proc/self/root{self.secret_path}")
        (root / "fd.log").symlink_to("/proc/self/fd/0")
        (root / "zero.log").symlink_to("/dev/zero")
        os.mkfifo(root / "fifo.log", 0o644)
        os.mknod(root / "dev.log", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # a /dev/zero
        # the hard link is to a second secret: the first must keep st_nlink == 1, or the
        # link count alone would refuse every symlink attack on it and hide a bug
        linked = self.secret_path.with_name("shadow-linked")
        linked.write_bytes(marker)
        os.link(linked, root / "hard.log")
        (root / "twin.log").write_bytes(GOOD)
        os.link(root / "twin.log", root / "twin2.log")
        noise = os.urandom(6_000_000).translate(bytes(b"ab"[i % 2] for i in range(256)))
        (root / "big.log").write_bytes(
            b"\n".join(noise[i : i + 60] for i in range(0, 6_000_000, 60))
        )
        for p in [*root.iterdir(), self.outside / "app.log", sibling / "app.log"]:
            if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1:
                p.chmod(0o644)
        self.fake = self.dir / "bin/fake"
        self.fake.parent.mkdir(mode=0o755)
        self.fake.write_text(FAKE)
        self.fake.chmod(0o755)

    def attack_policy(self, **limits: Any) -> str:
        """The default policy, plus app.log one directory down (so a walk through a
        symlinked directory reaches the no-follow open), a fake journalctl and docker."""
        policy = self.default_policy(**limits)
        assert policy.count("patterns = [") == 1
        return policy.replace("patterns = [", 'patterns = ["*/app.log", ') + (
            f'\n[programs]\njournalctl = "{self.fake}"\ndocker = ["{self.fake}", "docker"]\n'
            '\n[[journal]]\nunit = "worker-service"\n\n[[docker]]\ncontainer = "worker-container"\n'
        )


@pytest.fixture(scope="module")
def aw() -> Iterator[Attacked]:
    w = Attacked(name="attacks")
    try:
        w.plant()
        w.write_policy(w.attack_policy())
        w.start()
        yield w
    finally:
        w.destroy()


def ssh_all(w: Worker, commands: list[str]) -> list[subprocess.CompletedProcess[bytes]]:
    """Fresh `ssh` processes, a few at a time (each costs a handshake, not a core)."""
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda c: w.ssh(c, timeout=30), commands))


# ---------------------------------------------------------------- the corpus

# (command, exit code, part of the reason); {root} {log} {secret} {dir} are filled in
CORPUS: list[tuple[str, int, str]] = [
    # the original article's own example (docs/security.md), alone and inside a path
    ("'; cat /etc/passwd; echo '", 2, "unknown command"),
    ("tail -n 5 {log}'; cat /etc/passwd; echo '", 2, "path must be absolute and plain ASCII"),
    ("tail -n 5 '{log}; cat {secret}'", 2, "path must be absolute and plain ASCII"),
    # separators, substitutions, expansions, redirects
    ("tail -n 5 {log}; cat {secret}", 2, "shell syntax ';'"),
    ("tail -n 5 {log} && cat {secret}", 2, "shell syntax '&'"),
    ("tail -n 5 {log} || cat {secret}", 2, "'|' is only accepted as `grep ... | tail -n N`"),
    ("grep x {log} | cat {secret}", 2, "'|' is only accepted as"),
    ("grep x {log} | sh", 2, "'|' is only accepted as"),
    ("tail -n 5 {log} | tail -n 1", 2, "'|' is only accepted as"),
    ("tail -n 5 $(echo {secret})", 2, "shell syntax '$'"),
    ('tail -n 5 "$(echo {secret})"', 2, "shell expansion '$'"),
    ("tail -n 5 `echo {secret}`", 2, "shell syntax '`'"),
    ("tail${{IFS}}-n${{IFS}}5${{IFS}}{secret}", 2, "shell syntax '$'"),
    ("cat${{IFS}}{secret}", 2, "shell syntax '$'"),
    ("tail -n 5 {log};echo${{IFS}}x", 2, "shell syntax ';'"),
    ("tail -n 5 {log}\ncat {secret}", 2, "control character 0x0a"),
    ("tail -n 5 {log}\rcat {secret}", 2, "control character 0x0d"),
    ("tail -n 5 {log} > /tmp/pwned", 2, "shell syntax '>'"),
    ("tail -n 5 < {secret}", 2, "shell syntax '<'"),
    ("tail -n 5 {root}/*.log", 2, "wildcard '*'"),
    # traversal, plain and encoded, and look-alikes
    ("tail -n 5 {root}/../../../secret/shadow", 2, "must not contain empty, '.' or '..'"),
    ("tail -n 5 {root}/./../../../secret/shadow", 2, "'..' components"),
    ("tail -n 5 {root}/%2e%2e/%2e%2e/%2e%2e/secret/shadow", 3, "is not allowed by the policy"),
    ("tail -n 5 {root}/%2e%2e%2f%2e%2e%2fsecret.log", 4, "no such file"),
    ("tail -n 5 {root}/..%2f..%2f..%2fsecret%2fshadow", 3, "is not allowed by the policy"),
    (
        "tail -n 5 {root}/\udcc0\udcae\udcc0\udcae/\udcc0\udcae\udcc0\udcae/x.log",
        2,
        "not valid UTF-8",
    ),
    ("tail -n 5 {root}\uff0f..\uff0f..\uff0f..\uff0fsecret\uff0fshadow", 2, "plain ASCII"),
    ("tail -n 5 {root}/\u0430pp.log", 2, "plain ASCII"),  # Cyrillic a
    # links, special files and /proc
    ("tail -n 5 {root}/link.log", 3, "a symbolic link or non-directory in the path"),
    ("tail -F {root}/link.log", 3, "a symbolic link"),
    ("grep root {root}/link.log", 3, "a symbolic link"),
    ("range --since 2024-12-17 {root}/link.log", 3, "a symbolic link"),
    ("tail -n 5 {root}/rel.log", 3, "a symbolic link"),
    ("tail -n 5 {root}/outdir/app.log", 3, "a symbolic link or non-directory"),
    ("tail -n 5 {root}/fifo.log", 3, "is not a regular file"),
    ("tail -F {root}/fifo.log", 3, "is not a regular file"),
    ("grep x {root}/fifo.log", 3, "is not a regular file"),
    ("tail -n 5 {root}/dev.log", 3, "is not a regular file"),
    ("cat {root}/dev.log", 3, "is not a regular file"),
    ("cat {root}/zero.log", 3, "a symbolic link"),
    ("tail -n 5 /dev/zero", 3, "is not allowed by the policy"),
    ("tail -n 5 /proc/self/root{secret}", 3, "is not allowed by the policy"),
    ("tail -n 5 /proc/self/fd/0", 3, "is not allowed by the policy"),
    ("tail -n 5 /proc/self/cwd{secret}", 3, "is not allowed by the policy"),
    ("tail -n 5 {root}/proc.log", 3, "a symbolic link"),
    ("tail -n 5 {root}/fd.log", 3, "a symbolic link"),
    ("tail -n 5 {root}/hard.log", 3, "has 2 hard links; refused (allow_hardlinks in the policy)"),
    ("grep root {root}/hard.log", 3, "has 2 hard links"),
    ("tail -n 5 {root}/twin.log", 3, "has 2 hard links"),
    ("tail -n 5 {root}-secrets/app.log", 3, "is not allowed by the policy"),
    ("tail -n 5 {secret}", 3, "is not allowed by the policy"),
    ("cat {secret}", 3, "is not allowed by the policy"),
    ("tail -n 5 {root}/notes.txt", 3, "is not allowed by the policy"),
    # over-long input
    ("tail -n 5 {root}/" + "a" * 5000 + ".log", 2, "command longer than 4096 bytes"),
    # grep: the gate owns every option
    ("grep -f {secret} {log}", 2, "grep: option -f is not accepted"),
    ("grep --file={secret} x {log}", 2, "option --file is not accepted"),
    ("grep -r LOGTORUKUN {dir}", 2, "option -r is not accepted"),
    ("grep '--include=*' -r x {dir}", 2, "option --include is not accepted"),
    ("grep -- -f {secret}", 3, "is not allowed by the policy"),  # -f became the pattern
    ("grep -e x {log} {secret}", 2, "expected one PATH after the pattern"),
    # tail
    ("tail --pid=1 -f {log}", 2, "option --pid is not accepted"),
    ("tail --pid 1 -F {log}", 2, "option --pid is not accepted"),
    ("tail -c 100 {log}", 2, "option -c is not accepted"),
    ("tail -n 5 {log} {secret}", 2, "expected one PATH"),
    # journalctl / docker
    ("journalctl -u 'x + _SYSTEMD_UNIT=sshd.service'", 3, "unit 'x + _SYSTEMD_UNIT=sshd.service'"),
    ("journalctl -u worker-service + _SYSTEMD_UNIT=sshd.service", 2, "match expressions"),
    ("journalctl -u worker-service _SYSTEMD_UNIT=sshd.service", 2, "match expressions"),
    ("journalctl -u sshd", 3, "unit 'sshd' is not allowed"),
    ("journalctl -u worker-service --file={secret}", 2, "option --file is not accepted"),
    ("docker logs other-container", 3, "container 'other-container' is not allowed"),
    ("docker logs -- -H", 3, "container '-H' is not allowed"),
    ("docker run --rm -v /:/host alpine cat /host/etc/shadow", 2, "only `docker logs"),
    # regex bombs
    ("grep -E '(a*)*\\1' {log}", 2, "back-references are refused"),
    ("grep -E 'a{{99999}}' {log}", 2, "repetition count 99999 is over 255"),
    ("grep -E '((a{{255}}){{255}}){{255}}' {log}", 2, "nested repetition counts multiply"),
    ("journalctl -u worker-service -g '(.*)\\1'", 2, "back-references are refused"),
    # not ours at all
    ("sh -c 'cat {secret}'", 2, "unknown command 'sh'"),
    ("scp -f {secret}", 2, "unknown command 'scp'"),
]


def fill(aw: Attacked, command: str) -> str:
    return command.format(root=aw.root, log=aw.app_log, secret=aw.secret_path, dir=aw.dir)


def test_corpus_is_refused_with_no_secret_and_audited(aw: Attacked) -> None:
    commands = [fill(aw, c) for c, _, _ in CORPUS]
    assert len(set(commands)) == len(commands)
    before = len(aw.audit_records())
    results = ssh_all(aw, commands)
    denied: dict[str, list[dict[str, Any]]] = {}
    for rec in aw.audit_since(before):
        denied.setdefault(rec["command"], []).append(rec)
    marker = aw.secret_marker.encode()
    for command, (_, code, reason), out in zip(commands, CORPUS, results, strict=True):
        where = f"{command[:120]!r}: {out.returncode} {out.stderr[:300]!r}"
        assert marker not in out.stdout and marker not in out.stderr, where
        assert out.stdout == b"", where
        assert out.returncode == code, where
        line = out.stderr.decode("utf-8", "surrogateescape")
        assert line.startswith("logtorukun-gate: ") and line.count("\n") == 1, where
        assert reason in line, where
        # a long command is cut in its record, which then carries its full length
        (rec,) = [
            r
            for cut, recs in denied.items()
            if command.startswith(cut)
            for r in recs
            if r.get("command_length", len(cut)) == len(command)
        ]
        assert (rec["event"], rec["decision"], rec["exit"]) == ("request", "deny", code), where
        assert rec["reason"] == line[len("logtorukun-gate: ") : -1], where


def test_pattern_starting_with_dash_is_a_pattern(aw: Attacked) -> None:
    out = aw.ssh(f"grep -e '-12-17 14:03:05' {aw.app_log}")
    assert (out.returncode, out.stderr) == (0, b"")
    assert out.stdout == b"2024-12-17 14:03:05 ERROR [payments] charge failed for order 80412\n"
    out = aw.ssh(f"grep -e -v {aw.app_log}")  # as an option it would print every line
    assert (out.returncode, out.stdout) == (0, b"")
    out = aw.ssh(f"grep -- --include=x {aw.app_log}")
    assert (out.returncode, out.stdout) == (0, b"")


def test_journal_and_docker_user_text_is_only_ever_a_value(aw: Attacked) -> None:
    out = aw.ssh("journalctl -u worker-service -g '-x --file=/etc/shadow' --since -1h")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == [
        "[--no-pager]",
        "[--quiet]",
        "[-o]",
        "[short-iso]",
        "[-u]",
        "[worker-service]",
        "[--since=-1h]",
        "[--grep=-x --file=/etc/shadow]",
    ]
    out = aw.ssh("docker logs --tail 5 worker-container")
    assert out.stdout.decode().splitlines() == [
        "[docker]",
        "[logs]",
        "[--tail]",
        "[5]",
        "[--]",
        "[worker-container]",
    ]


def test_sftp_subsystem_is_refused(make_worker: MakeWorker) -> None:
    """With a Subsystem configured, sshd runs the forced command and names the subsystem."""
    w = make_worker(name="sftp", sshd_options=["Subsystem sftp internal-sftp"])
    out = subprocess.run(
        w.ssh_argv("sftp", options=["-s"]),
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == Exit.BAD_REQUEST and out.stdout == b""
    # (ssh -s does not show the channel's stderr: the audit record has the reason)
    rec = w.audit_records()[-1]
    assert (rec["command"], rec["decision"]) == ("internal-sftp", "deny")
    assert rec["reason"].startswith("unknown command 'internal-sftp'")


def test_hard_links_only_with_allow_hardlinks(aw: Attacked) -> None:
    assert aw.ssh(f"tail -n 1 {aw.root}/twin.log").returncode == Exit.REFUSED
    policy = aw.attack_policy().replace("patterns = [", "allow_hardlinks = true\npatterns = [")
    assert "allow_hardlinks = true" in policy
    with aw.policy(policy):
        out = aw.ssh(f"tail -n 3 {aw.root}/twin.log")
    assert (out.returncode, out.stdout, out.stderr) == (0, GOOD, b"")


def test_sources_lists_no_trap(aw: Attacked) -> None:
    out = aw.ssh("sources")
    assert out.returncode == 0 and aw.secret_marker.encode() not in out.stdout
    names = {Path(f["path"]).name for f in json.loads(out.stdout)["files"]}
    assert "app.log" in names and "big.log" in names
    assert not names & {
        "link.log",
        "rel.log",
        "proc.log",
        "fd.log",
        "zero.log",
        "fifo.log",
        "dev.log",
        "hard.log",
        "twin.log",
        "twin2.log",
        "notes.txt",
    }


@pytest.mark.parametrize("pattern", ["(a|b)*a(a|b){12}c"])
def test_cpu_heavy_regex_is_killed_at_max_seconds(aw: Attacked, pattern: str) -> None:
    with aw.policy(aw.attack_policy(max_seconds=1)):
        before = len(aw.audit_records())
        out = aw.ssh(f"grep -E '{pattern}' {aw.root}/big.log", timeout=30)
        records = aw.audit_since(before)
    assert out.returncode == Exit.LIMIT, out.stderr
    assert out.stdout == b""
    assert out.stderr in (
        b"logtorukun-gate: stopped after 1 s (time limit in the policy)\n",
        b"logtorukun-gate: stopped at the CPU limit (1 s)\n",
    )
    assert records[-1]["event"] == "end" and records[-1]["exit"] == Exit.LIMIT


# ---------------------------------------------------------------- the swap race


def test_symlink_swapped_in_a_loop_during_1000_requests(aw: Attacked, tmp_path: Path) -> None:
    """1000 requests (or more) over ONE bridge session (`ssh ... bridge`) while two processes swap.

    One bridge session, not 1000 `ssh` processes: a fresh ssh costs ~0.25 s of handshake
    and start-up here, 1000 of them minutes; inside the bridge each request takes about a
    millisecond, so the race window is hit far more often. It is the same code path as a
    one-shot request (runner.serve; test_bridge checks refusals and records are equal).
    Odd ids read swap.log (file <-> symlink to the secret), even ids swapdir/app.log
    (directory <-> symlink to a directory outside whose app.log holds the secret).
    """
    good = tmp_path / "good.log"
    good.write_bytes(GOOD)
    stash = aw.root / ".stash"
    stash.mkdir(mode=0o755)
    (stash / "app.log").write_bytes(GOOD)
    (stash / "app.log").chmod(0o644)
    stop = tmp_path / "stop"
    swappers = [
        subprocess.Popen(
            [sys.executable, "-c", SWAPPER, kind, str(name), str(src), str(evil), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for kind, name, src, evil in (
            ("file", aw.root / "swap.log", good, aw.secret_path),
            ("dir", aw.root / "swapdir", stash, aw.outside),
        )
    ]
    for kind in ("file", "dir"):  # both loops are running before the first request
        for _ in range(400):
            if Path(f"{stop}.{kind}").exists():
                break
            time.sleep(0.05)
    commands = {1: f"tail -n 3 {aw.root}/swap.log", 0: f"tail -n 3 {aw.root}/swapdir/app.log"}
    outcomes: dict[tuple[int, str], int] = {}
    marker = aw.secret_marker.encode()
    proc = subprocess.Popen(
        aw.ssh_argv("bridge"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        reader = FrameReader()
        frames: list[tuple[int, int, bytes]] = []

        def until_end(rid: int) -> tuple[bytes, dict[str, Any]]:
            # requests run concurrently: frames of other ids may come first; keep them
            data = b""
            while True:
                mine = next((i for i, f in enumerate(frames) if f[1] == rid), None)
                if mine is None:
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)  # type: ignore[union-attr]
                    assert chunk, "the bridge session ended early"
                    frames.extend(f for f in reader.feed(chunk) if f[1] != 0)  # not HELLO
                    continue
                ftype, _frid, payload = frames.pop(mine)
                if ftype == END:
                    return data, json.loads(payload)
                data += payload

        # 10 x 100 requests, pipelined; more batches (bounded) only if a loaded machine
        # kept a swapper off the CPU so long that one state was never seen
        deadline = time.monotonic() + 30
        batch = 0
        while batch < 10 or (not all_seen(outcomes) and batch < 30 and time.monotonic() < deadline):
            rids = range(batch * 100 + 1, batch * 100 + 101)
            batch += 1
            proc.stdin.write(
                b"".join(
                    pack(REQUEST, rid, json.dumps({"command": commands[rid % 2]}).encode())
                    for rid in rids
                )
            )
            proc.stdin.flush()
            for rid in rids:
                data, end = until_end(rid)
                assert marker not in data, f"request {rid} read the secret"
                if end["exit"] == 0:
                    assert data == GOOD, (rid, data)
                    key = "read"
                else:
                    assert data == b"" and end["exit"] in (Exit.REFUSED, Exit.NOT_FOUND), end
                    key = f"refused {end['exit']}"
                outcomes[rid % 2, key] = outcomes.get((rid % 2, key), 0) + 1
    finally:
        stop.touch()
        counts = [int(s.communicate(timeout=20)[0] or 0) for s in swappers]
        proc.stdin.close()
        proc.wait(20)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
    assert sum(outcomes.values()) >= 1000
    assert min(counts) > 0, f"a swapper never ran: {counts}"
    assert all_seen(outcomes), outcomes  # both states, for both kinds of swap


def all_seen(outcomes: dict[tuple[int, str], int]) -> bool:
    return all(
        (parity, "read") in outcomes and any(p == parity and k != "read" for p, k in outcomes)
        for parity in (0, 1)
    )
