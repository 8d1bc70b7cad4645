"""runner.serve / authorize: one request from parse to the end record, under limits.

The first part runs `serve` in-process on a real tree (real grep, gzip, files, audit
file, slot locks); the second part goes through a real sshd for what only a real
connection shows: follow ending when the client dies, busy while follows hold slots.
"""

from __future__ import annotations

import gzip
import json
import os
import pwd
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logtorukun.gate import follow as follow_mod
from logtorukun.gate import runner, slots
from logtorukun.gate.audit import AuditLog
from logtorukun.gate.errors import Exit
from logtorukun.gate.grammar import parse
from logtorukun.gate.output import Output
from logtorukun.gate.policy import Policy, parse_policy
from logtorukun.gate.runner import Context, serve
from logtorukun.gate.vocabulary import Status
from logtorukun.ops.sample_logs import write_sample_logs
from tests.conftest import MakeWorker
from tests.support.fds import held_under
from tests.support.sshd import USER, Worker

MARKER = "RUNNER-SECRET-2b7e"
BIG = 10**9

FAKE = """#!/bin/sh
# stands in for journalctl / sudo docker: shows the argv the gate built, one per line
for a in "$@"; do printf '[%s]\\n' "$a"; done
"""


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "var/log/worker"
        self.app_log = self.root / "app.log"
        self.secret = base / "secret/shadow"
        self.audit = base / "audit/gate.jsonl"
        self.state = base / "state"
        self.fake = base / "bin/fake"
        write_sample_logs(self.root)
        for d in (self.secret.parent, self.audit.parent, self.fake.parent):
            d.mkdir()
        self.state.mkdir(mode=0o700)
        self.secret.write_text(f"root:{MARKER}:19000::::::\n")
        self.fake.write_text(FAKE)
        self.fake.chmod(0o755)
        (self.root / "link.log").symlink_to(self.secret)
        linked = self.secret.with_name("linked")  # the secret itself keeps st_nlink == 1
        linked.write_text(f"root:{MARKER}:19000::::::\n")
        os.link(linked, self.root / "hard.log")
        os.mkfifo(self.root / "fifo.log")
        (self.root / "opts.log").write_text(
            "a -v b\nplain line\n--include=x\n-c counted\nERROR upper\nerror lower\n"
        )

    def policy(self, **limits: Any) -> Policy:
        values = {"state_dir": str(self.state), **limits}
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
        text = f"""
[limits]
{body}
[audit]
destination = "file"
path = "{self.audit}"
[programs]
journalctl = "{self.fake}"
docker = ["{self.fake}", "docker"]
[[files]]
root = "{self.root}"
patterns = ["*.log", "*.log.[0-9]", "*.log.*.gz"]
[[journal]]
unit = "worker-service"
[[docker]]
container = "worker-container"
"""
        return parse_policy(tomllib.loads(text), "/test/policy.toml")

    def records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def run(
        self,
        command: str,
        policy: Policy | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> tuple[Status, bytes, list[dict[str, Any]]]:
        policy = policy or self.policy()
        n = len(self.records())
        chunks: list[bytes] = []
        out = Output(
            sink or chunks.append,
            max_lines=policy.limits.max_lines,
            max_bytes=policy.limits.max_bytes,
        )
        ctx = Context(policy, AuditLog(policy.audit), {"client": "192.0.2.7"})
        try:
            result = serve(command, ctx, out)
        finally:
            ctx.audit.close()
        data = b"".join(chunks)
        assert MARKER.encode() not in data
        return result, data, self.records()[n:]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("runner"))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def deny(env: Env, command: str, code: int, match: str, policy: Policy | None = None) -> str:
    result, data, recs = env.run(command, policy)
    assert (result.exit, data) == (code, b""), result
    assert match in result.reason and "\n" not in result.reason
    assert len(recs) == 1
    rec = recs[0]
    assert (rec["event"], rec["decision"], rec["exit"]) == ("request", "deny", code)
    assert (rec["reason"], rec["command"]) == (result.reason, command)
    return result.reason


# ---------------------------------------------------------------- docs/gate.md's command lines


def test_tail_n_200(env: Env) -> None:
    result, data, recs = env.run(f"tail -n 200 {env.app_log}")
    assert result.exit == Exit.OK and result.reason == ""
    assert data == b"".join(lines(env.app_log)[-200:])
    assert (result.lines, result.bytes) == (200, len(data))
    start, end = recs
    assert start["event"] == "request" and start["decision"] == "allow"
    assert start["target"] == str(env.app_log) and start["client"] == "192.0.2.7"
    assert end["event"] == "end" and end["id"] == start["id"]
    assert (end["exit"], end["lines"], end["bytes"], end["truncated"]) == (0, 200, len(data), False)
    assert end["duration_ms"] >= 0


def test_grep_pipe_tail(env: Env) -> None:
    matching = [ln for ln in lines(env.app_log) if b"ERROR" in ln]
    assert 20 < len(matching) < 100
    result, data, _ = env.run(f"grep 'ERROR' {env.app_log} | tail -n 100")
    assert result.exit == Exit.OK and data == b"".join(matching)
    result, data, _ = env.run(f"grep 'ERROR' {env.app_log} | tail -n 20")
    assert result.exit == Exit.OK and data == b"".join(matching[-20:])


def test_a_pattern_grep_cannot_compile_is_a_bad_request_naming_it(env: Env) -> None:
    result, data, recs = env.run(f"grep -E 'a(b' {env.app_log}")
    assert (result.exit, data) == (Exit.BAD_REQUEST, b"")
    assert result.reason.startswith("grep: the pattern 'a(b' is not valid: ")
    assert "\n" not in result.reason
    assert recs[-1]["event"] == "end" and recs[-1]["exit"] == Exit.BAD_REQUEST


def test_a_bridge_request_is_parsed_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bridge parses each request once to choose inline or a thread, and hands the
    result (request or refusal) to serve(): no second parse, no cache to pay for one."""
    from logtorukun.gate import grammar
    from logtorukun.gate.bridge import BridgeServer
    from logtorukun.gate.protocol import END, REQUEST, FrameReader, pack

    parsed: list[str] = []
    real = grammar.parse

    def counting(command: str) -> Any:
        parsed.append(command)
        return real(command)

    monkeypatch.setattr(grammar, "parse", counting)
    commands = [
        f"tail -n 2 {env.app_log}",  # inline
        f"grep -c ERROR {env.app_log}",  # a thread
        "tail -n 2 /etc/passwd",  # refused
        "help",
    ]
    inr, inw = os.pipe()
    outr, outw = os.pipe()
    frames = b"".join(
        pack(REQUEST, rid, json.dumps({"command": c}).encode()) for rid, c in enumerate(commands, 1)
    )
    os.write(inw, frames)
    policy = env.policy()
    ctx = Context(policy, AuditLog(policy.audit), {"client": "192.0.2.7"})
    try:
        ends: dict[int, dict[str, Any]] = {}
        reader = FrameReader()

        def read_until_all_ended() -> None:
            while len(ends) < len(commands):
                for ftype, rid, payload in reader.feed(os.read(outr, 1 << 16)):
                    if ftype == END:
                        ends[rid] = json.loads(payload)

        import threading

        watcher = threading.Thread(target=read_until_all_ended)
        watcher.start()
        server = threading.Thread(target=BridgeServer(ctx, inr, outw).run)
        server.start()
        watcher.join(30)
        assert not watcher.is_alive(), ends
        os.close(inw)  # EOF: the session ends
        server.join(30)
    finally:
        ctx.audit.close()
        for fd in (inr, outr, outw):
            os.close(fd)
    assert sorted(parsed) == sorted(commands)  # each exactly once
    assert [ends[i]["exit"] for i in (1, 2, 3, 4)] == [0, 0, Exit.REFUSED, 0]


def test_grep_an_hour(env: Env) -> None:
    result, data, _ = env.run(f"grep '2024-12-17 14:' {env.app_log}")
    hour = [ln for ln in lines(env.app_log) if b"2024-12-17 14:" in ln]
    assert result.exit == Exit.OK and data == b"".join(hour)
    assert b"charge failed for order 80412" in data and "通知".encode() in data


def test_the_request_record_is_written_before_any_data(env: Env) -> None:
    seen: list[list[dict[str, Any]]] = []

    def sink(chunk: bytes) -> None:
        if not seen:
            seen.append(env.records())

    before = len(env.records())
    result, _, recs = env.run(f"tail -n 3 {env.app_log}", sink=sink)
    assert result.exit == Exit.OK and seen
    at_first_byte = seen[0][before:]
    assert [r["event"] for r in at_first_byte] == ["request"]
    assert at_first_byte[0]["id"] == recs[0]["id"]


# ---------------------------------------------------------------- grep: options are ours


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("grep -e -v {p}", b"a -v b\n"),  # not an inverted match
        ("grep -- -v {p}", b"a -v b\n"),
        ("grep -e -c {p}", b"-c counted\n"),  # not a count
        ("grep -- --include=x {p}", b"--include=x\n"),
        ("grep -e '-' {p} | tail -n 1", b"-c counted\n"),
        ("grep -i error {p}", b"ERROR upper\nerror lower\n"),
        ("grep -c error {p}", b"1\n"),
        ("grep -v -e e {p}", b"a -v b\n"),
        ("grep -E 'upper|lower' {p}", b"ERROR upper\nerror lower\n"),
        ("grep 'upper|lower' {p}", b""),  # fixed string by default
        ("grep -m 1 l {p}", b"plain line\n"),
        ("grep -n plain {p}", b"2:plain line\n"),
    ],
)
def test_grep_runs_real_grep_with_our_argv(env: Env, command: str, expected: bytes) -> None:
    result, data, _ = env.run(command.format(p=env.root / "opts.log"))
    assert (result.exit, data) == (Exit.OK, expected), result


def test_grep_argv_never_holds_a_path_and_always_ends_with_e_pattern(env: Env) -> None:
    policy = env.policy()
    req = parse(f"grep -E -i -v -c -n -w -m 5 -- -f {env.app_log}")
    argv = runner.grep_argv(req, policy)  # type: ignore[arg-type]
    assert argv == [
        "/usr/bin/grep",
        "-a",
        "--color=never",
        "-E",
        "-i",
        "-v",
        "-c",
        "-n",
        "-w",
        "-m",
        "5",
        "-e",
        "-f",
    ]
    assert runner.grep_argv(parse(f"grep x {env.app_log}"), policy)[-3:] == ["-F", "-e", "x"]  # type: ignore[arg-type]


# ---------------------------------------------------------------- journalctl / docker argv


def test_journal_runs_our_argv_with_user_text_attached_to_options(env: Env) -> None:
    result, data, recs = env.run("journalctl -u worker-service -n 5 -g -x --since -1h -p err -f")
    assert result.exit == Exit.OK, result
    assert data.decode().splitlines() == [
        "[--no-pager]",
        "[--quiet]",
        "[-o]",
        "[short-iso]",
        "[-u]",
        "[worker-service]",
        "[-n]",
        "[5]",
        "[--since=-1h]",
        "[--grep=-x]",
        "[-p]",
        "[err]",
        "[--follow]",
    ]
    assert recs[0]["target"] == "unit:worker-service"


def test_journal_unit_must_be_allowed(env: Env) -> None:
    deny(
        env,
        "journalctl -u 'x + _SYSTEMD_UNIT=sshd.service'",
        Exit.REFUSED,
        "unit 'x + _SYSTEMD_UNIT=sshd.service' is not allowed",
    )
    deny(env, "journalctl -u sshd", Exit.REFUSED, "unit 'sshd' is not allowed")
    deny(
        env,
        "journalctl -u worker-service _SYSTEMD_UNIT=sshd.service",
        Exit.BAD_REQUEST,
        "match expressions are not accepted",
    )
    result, data, _ = env.run("journalctl -u worker-service.service -n 1")
    assert result.exit == Exit.OK and b"[worker-service.service]\n" in data


def test_docker_runs_our_argv_and_only_for_allowed_containers(env: Env) -> None:
    result, data, recs = env.run("docker logs --tail 20 -t --since 10m -f worker-container")
    assert result.exit == Exit.OK, result
    assert data.decode().splitlines() == [
        "[docker]",
        "[logs]",
        "[--tail]",
        "[20]",
        "[--timestamps]",
        "[--since]",
        "[10m]",
        "[--follow]",
        "[--]",
        "[worker-container]",
    ]
    assert recs[0]["target"] == "container:worker-container"
    deny(env, "docker logs other-container", Exit.REFUSED, "container 'other-container'")
    deny(env, "docker logs -- -f", Exit.REFUSED, "container '-f' is not allowed")
    deny(
        env,
        "docker run --rm -v /:/h alpine cat /h/etc/shadow",
        Exit.BAD_REQUEST,
        "only `docker logs",
    )


# ---------------------------------------------------------------- refusals are audited


@pytest.mark.parametrize(
    ("command", "code", "match"),
    [
        ("tail -n 1 {root}/link.log", Exit.REFUSED, "a symbolic link"),
        ("tail -n 1 {root}/hard.log", Exit.REFUSED, "hard links"),
        ("grep root {root}/hard.log", Exit.REFUSED, "hard links"),
        ("tail -n 1 {root}/fifo.log", Exit.REFUSED, "not a regular file"),
        ("tail -F {root}/fifo.log", Exit.REFUSED, "not a regular file"),
        ("tail -n 1 {root}/notes.txt", Exit.REFUSED, "not allowed by the policy"),
        ("tail -n 1 {root}/nope.log", Exit.NOT_FOUND, "no such file"),
        ("tail -n 1 {root}-secrets/app.log", Exit.REFUSED, "not allowed by the policy"),
        ("tail -n 1 {root}/../../../secret/shadow", Exit.BAD_REQUEST, "'..' components"),
        ("tail -F {root}/app.log.2.gz", Exit.BAD_REQUEST, "never grows"),
        ("tail -n 1 {root}/app.log; cat {secret}", Exit.BAD_REQUEST, "shell syntax ';'"),
        ("bridge", Exit.BAD_REQUEST, "bridge cannot be nested"),
        ("tail -n 1 {root}/app.log\udcc0", Exit.BAD_REQUEST, "not valid UTF-8"),
        ("grep '\ud800' {root}/app.log", Exit.BAD_REQUEST, "not valid UTF-8"),
        ("", Exit.BAD_REQUEST, "empty command"),
    ],
)
def test_refusals_send_nothing_and_are_audited(
    env: Env, command: str, code: int, match: str
) -> None:
    reason = deny(env, command.format(root=env.root, secret=env.secret), code, match)
    assert reason.isprintable()


# ---------------------------------------------------------------- limits


def test_max_lines_cuts_on_a_line_boundary(env: Env) -> None:
    result, data, recs = env.run(f"cat {env.app_log}", env.policy(max_lines=10))
    assert result.exit == Exit.LIMIT == 5
    assert result.reason == "output truncated at 10 lines (max_lines in the policy)"
    assert data == b"".join(lines(env.app_log)[:10])
    assert (recs[1]["exit"], recs[1]["truncated"], recs[1]["lines"]) == (5, True, 10)


def test_max_bytes_cuts_on_a_line_boundary(env: Env) -> None:
    for command in (f"cat {env.app_log}", f"grep 2024 {env.app_log}", f"tail -n 500 {env.app_log}"):
        result, data, recs = env.run(command, env.policy(max_bytes=1000))
        assert result.exit == Exit.LIMIT, command
        assert result.reason == "output truncated at 1000 bytes (max_bytes in the policy)"
        assert 900 < len(data) <= 1000 and data.endswith(b"\n")
        whole = b"".join(lines(env.app_log))
        assert data in whole and (whole.index(data) == 0 or whole[whole.index(data) - 1] == 10)
        assert recs[1]["truncated"] is True and recs[1]["bytes"] == len(data)


def test_tail_over_max_lines_says_so(env: Env) -> None:
    result, data, _ = env.run(f"tail -n 500 {env.app_log}", env.policy(max_lines=100))
    assert result.exit == Exit.LIMIT
    assert result.reason == "asked for 500 lines; max_lines is 100"
    assert data == b"".join(lines(env.app_log)[-100:])


@pytest.mark.parametrize(
    "pattern",
    ["(a|b)*a(a|b){12}c"],  # accepted (no back-reference, counts <= 255), but slow
)
def test_cpu_heavy_regex_is_killed_at_the_time_limit(env: Env, pattern: str) -> None:
    big = env.root / "big.log"
    if not big.exists():  # 6 MB of random a/b lines that never match
        noise = os.urandom(6_000_000).translate(bytes(b"ab"[i % 2] for i in range(256)))
        big.write_bytes(b"\n".join(noise[i : i + 60] for i in range(0, len(noise), 60)))
    result, data, recs = env.run(f"grep -E '{pattern}' {big}", env.policy(max_seconds=1))
    assert result.exit == Exit.LIMIT, result
    assert "time limit" in result.reason or "CPU limit" in result.reason
    assert data == b"" and recs[1]["exit"] == 5


def test_busy_is_refused_not_queued(env: Env) -> None:
    policy = env.policy(max_concurrent=2)
    held = [slots.acquire(policy.limits) for _ in range(2)]
    try:
        for command in (
            f"grep x {env.app_log}",
            f"tail -F {env.app_log}",
            f"cat {env.app_log}",
            "journalctl -u worker-service",
        ):
            reason = deny(env, command, Exit.BUSY, "busy: 2 requests already running", policy)
            assert "max_concurrent" in reason
        # bounded in-process reads need no slot
        assert env.run(f"tail -n 1 {env.app_log}", policy)[0].exit == Exit.OK
    finally:
        for s in held:
            s.release()
    assert env.run(f"grep -c x {env.app_log}", policy)[0].exit == Exit.OK


def test_a_refused_follow_leaks_no_descriptor(env: Env) -> None:
    """A bridge session lives long: every busy-refused `tail -F` must close its file."""
    policy = env.policy(max_concurrent=1)
    held = slots.acquire(policy.limits)
    try:
        before = held_under(env.base)
        for _ in range(20):
            assert env.run(f"tail -F {env.app_log}", policy)[0].exit == Exit.BUSY
        assert held_under(env.base) == before
    finally:
        held.release()


def test_audit_failure_sends_no_data(env: Env, tmp_path: Path) -> None:
    policy = env.policy()
    bad = parse_policy(
        {
            **tomllib.loads(f'[audit]\ndestination = "file"\npath = "{tmp_path}/no/dir/a.jsonl"'),
            "files": [{"root": str(env.root)}],
            "limits": {"state_dir": str(env.state)},
        },
        "/p.toml",
    )
    assert policy.files[0].root == bad.files[0].root
    before = held_under(env.base)
    for command in (f"tail -n 5 {env.app_log}", f"tail -F {env.app_log}", "nonsense"):
        sent: list[bytes] = []
        out = Output(sent.append, max_lines=BIG, max_bytes=BIG)
        result = serve(command, Context(bad, AuditLog(bad.audit)), out)
        assert result.exit == Exit.AUDIT == 8
        assert result.reason.startswith(f"audit record cannot be written to {tmp_path}/no/dir")
        assert result.reason.endswith("refusing (fail closed)")
        assert sent == []
    assert held_under(env.base) == before


# ---------------------------------------------------------------- gz, head, sources


def test_gz_is_read_transparently(env: Env) -> None:
    gz = env.root / "app.log.2.gz"
    plain = gzip.decompress(gz.read_bytes()).splitlines(keepends=True)
    result, data, _ = env.run(f"tail -n 5 {gz}")
    assert (result.exit, data) == (Exit.OK, b"".join(plain[-5:]))
    result, data, _ = env.run(f"grep ERROR {gz}")
    assert (result.exit, data) == (Exit.OK, b"".join(ln for ln in plain if b"ERROR" in ln))
    assert data
    result, data, _ = env.run(f"head -n 3 {gz}")
    assert (result.exit, data) == (Exit.OK, b"".join(plain[:3]))


def test_head_and_cat(env: Env) -> None:
    assert env.run(f"head -n 2 {env.app_log}")[1] == b"".join(lines(env.app_log)[:2])
    assert env.run(f"cat {env.app_log}")[1] == env.app_log.read_bytes()


def test_sources_lists_only_what_may_be_read(env: Env) -> None:
    result, data, recs = env.run("sources")
    assert result.exit == Exit.OK and recs[0]["decision"] == "allow"
    doc = json.loads(data)
    paths = {f["path"]: f for f in doc["files"]}
    assert {"app.log", "app.log.1", "app.log.2.gz", "opts.log"} <= {Path(p).name for p in paths}
    for name in ("link.log", "hard.log", "fifo.log", "notes.txt"):
        assert str(env.root / name) not in paths
    assert paths[str(env.app_log)]["size"] == env.app_log.stat().st_size
    assert paths[str(env.root / "app.log.2.gz")]["compressed"] is True
    assert (doc["units"], doc["containers"]) == (["worker-service"], ["worker-container"])


# ---------------------------------------------------------------- over a real sshd


def gate_pids(w: Worker) -> list[int]:
    """Gate processes of this worker still alive (wherever they were re-parented)."""
    uid = pwd.getpwnam(USER).pw_uid
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(w.gate_entry).encode() in cmd and state != "Z":
            found.append(int(entry))
    return found


def wait_until(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def start_follow(w: Worker, n: int = 1) -> tuple[subprocess.Popen[bytes], bytes]:
    proc = subprocess.Popen(
        w.ssh_argv(f"tail -F -n {n} {w.app_log}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the slot is held before the first byte is sent
    return proc, first


def test_ssh_follow_sees_appended_lines_and_ends_with_the_client(make_worker: MakeWorker) -> None:
    w = make_worker(name="follow")
    proc, first = start_follow(w)
    try:
        assert first == w.app_log.read_bytes().splitlines(keepends=True)[-1]
        # the data is flowing, and its `request` record is already there (no `end` yet)
        assert [(r["event"], r["decision"]) for r in w.audit_records()] == [("request", "allow")]
        with open(w.app_log, "ab") as f:
            f.write(b"2024-12-17 16:00:00 INFO  [test] appended while following\n")
        assert proc.stdout is not None
        assert (
            proc.stdout.readline() == b"2024-12-17 16:00:00 INFO  [test] appended while following\n"
        )
        assert gate_pids(w), "the follow's gate should be running"
    finally:
        proc.kill()
        proc.wait(10)
    assert wait_until(lambda: not gate_pids(w)), "the gate outlived its client"
    end = [r for r in w.audit_records() if r["event"] == "end"]
    assert end and end[-1]["exit"] == 0 and end[-1]["reason"] == "client went away"
    # woken by inotify (the unprivileged gate user can watch its own open file)
    assert end[-1]["follow"] == "inotify"


def test_ssh_follow_ends_at_follow_max_seconds(make_worker: MakeWorker) -> None:
    w = make_worker(name="follow-max")
    w.write_policy(w.default_policy(follow_max_seconds=1))
    out = w.ssh(f"tail -F -n 2 {w.app_log}", timeout=20)
    assert out.returncode == Exit.LIMIT, out.stderr
    assert out.stderr == b"logtorukun-gate: follow stopped after 1 s (follow_max_seconds)\n"
    assert out.stdout == b"".join(w.app_log.read_bytes().splitlines(keepends=True)[-2:])


def test_ssh_busy_while_follows_hold_every_slot(make_worker: MakeWorker) -> None:
    w = make_worker(name="busy")
    w.write_policy(w.default_policy(max_concurrent=2))
    follows = [start_follow(w) for _ in range(2)]
    try:
        assert all(first for _, first in follows)
        for command in (f"tail -F {w.app_log}", f"grep ERROR {w.app_log}"):
            out = w.ssh(command, timeout=20)
            assert out.returncode == Exit.BUSY == 6, out.stderr
            assert out.stdout == b""
            assert out.stderr.startswith(b"logtorukun-gate: busy: 2 requests already running")
            assert out.stderr.count(b"\n") == 1
        assert w.ssh(f"tail -n 1 {w.app_log}").returncode == 0  # needs no slot
    finally:
        for proc, _ in follows:
            proc.kill()
            proc.wait(10)
    assert wait_until(lambda: not gate_pids(w))
    assert w.ssh(f"grep -c ERROR {w.app_log}").returncode == 0  # the slots came back
    denied = [r for r in w.audit_records() if r.get("decision") == "deny"]
    assert len(denied) == 2 and all(r["exit"] == 6 for r in denied)


def test_ssh_gz_tail_and_grep(worker: Worker) -> None:
    gz = worker.root / "app.log.2.gz"
    plain = gzip.decompress(gz.read_bytes()).splitlines(keepends=True)
    out = worker.ssh(f"tail -n 20 {gz}")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"".join(plain[-20:]), b"")
    out = worker.ssh(f"grep -i 'warn' {gz} | tail -n 3")
    want = [ln for ln in plain if b"warn" in ln.lower()][-3:]
    assert (out.returncode, out.stdout) == (0, b"".join(want)) and len(want) == 3


def test_ssh_truncation_notice(worker: Worker) -> None:
    with worker.policy(worker.default_policy(max_lines=7)):
        out = worker.ssh(f"grep INFO {worker.app_log}")
    assert out.returncode == Exit.LIMIT
    assert out.stderr == b"logtorukun-gate: output truncated at 7 lines (max_lines in the policy)\n"
    want = [ln for ln in worker.app_log.read_bytes().splitlines(keepends=True) if b"INFO" in ln]
    assert out.stdout == b"".join(want[:7])


BIG_CAPS = {"max_lines": 10**9, "max_bytes": 10**10}  # no cap can bind: cat goes by sendfile


@pytest.mark.parametrize("caps", [{}, BIG_CAPS], ids=["counted", "sendfile"])
def test_ssh_client_that_stops_reading_does_not_keep_the_gate(
    make_worker: MakeWorker, caps: dict[str, int]
) -> None:
    """A connected client that reads nothing: the gate's writes block, but its time limit
    still ends the request (and frees its slot) instead of waiting for the client forever."""
    w = make_worker(name="stall")
    big = w.root / "big.log"
    big.write_bytes((b"x" * 999 + b"\n") * 8000)  # 8 MB: more than ssh and pipes buffer
    big.chmod(0o644)
    w.write_policy(w.default_policy(max_seconds=1, follow_max_seconds=2, max_concurrent=2, **caps))
    stalled = [
        subprocess.Popen(
            w.ssh_argv(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # nobody reads these pipes
        for command in (f"cat {big}", f"tail -F -n 8000 {big}")
    ]
    try:
        assert wait_until(lambda: len(gate_pids(w)) >= 2, 10)
        assert wait_until(lambda: not gate_pids(w), 15), "a stalled client kept its gate"
        ends = [r for r in w.audit_records() if r["event"] == "end"]
        assert sorted(r["exit"] for r in ends) == [Exit.LIMIT, Exit.LIMIT], ends
        assert all("the client is not reading" in r["reason"] for r in ends), ends
        assert w.ssh(f"grep -c ERROR {w.app_log}").returncode == 0  # slots are free
    finally:
        for p in stalled:
            p.kill()
            p.communicate(timeout=10)


def test_ssh_cat_by_sendfile_is_byte_exact_and_says_lines_were_not_counted(
    make_worker: MakeWorker,
) -> None:
    w = make_worker(name="sendfile")
    big = w.root / "big.log"
    body = b"".join(b"%07d %s\n" % (i, b"y" * (i % 97)) for i in range(40_000)) + b"no newline"
    big.write_bytes(body)
    big.chmod(0o644)
    with w.policy(w.default_policy(**BIG_CAPS)):
        out = w.ssh(f"cat {big}")
    assert out.returncode == 0 and out.stdout == body
    end = [r for r in w.audit_records() if r["event"] == "end"][-1]
    assert end["bytes"] == len(body) and end["lines_counted"] is False
    # With the default caps the line cap can bind: every line is counted.
    small = w.root / "small.log"
    small.write_bytes(body[:50_000])
    small.chmod(0o644)
    out = w.ssh(f"cat {small}")
    assert out.returncode == 0 and out.stdout == body[:50_000]
    end = [r for r in w.audit_records() if r["event"] == "end"][-1]
    assert end["lines"] == body[:50_000].count(b"\n") + 1 and "lines_counted" not in end


@pytest.mark.parametrize(
    ("caps", "want_lines", "which"),
    [
        ({"max_lines": 5, "max_bytes": 10**10}, 5, "max_lines"),  # the line cap binds
        ({"max_lines": 10**9, "max_bytes": 2500}, 2, "max_bytes"),  # uncounted, byte cap
    ],
)
def test_ssh_cat_caps_hold_on_the_fast_paths(
    make_worker: MakeWorker, caps: dict[str, int], want_lines: int, which: str
) -> None:
    w = make_worker(name="fastcaps")
    big = w.root / "big.log"
    lines = [b"%04d" % i + b"z" * 995 + b"\n" for i in range(3000)]  # 1,000-byte lines
    big.write_bytes(b"".join(lines))
    big.chmod(0o644)
    with w.policy(w.default_policy(**caps)):
        for command in (f"cat {big}", f"grep z {big}"):
            out = w.ssh(command)
            assert out.returncode == Exit.LIMIT, out.stderr
            assert out.stdout == b"".join(lines[:want_lines])
            assert which.encode() in out.stderr


def test_follow_rename_chase_reads_only_what_the_policy_admits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify's rename events lead the follow to a file's new name; that name goes
    through the policy and the safe open like any request. Here the file that briefly
    held the path is renamed to a name the policy does not admit: it is not read."""
    monkeypatch.setattr(follow_mod, "SWITCH_QUIET", 0.0)  # the test steps, time does not pass
    e = Env(tmp_path)
    app = e.root / "app.log"
    app.write_bytes(b"")
    policy = e.policy()
    sink: list[bytes] = []
    asleep, go = threading.Semaphore(0), threading.Semaphore(0)
    stop = False

    def waiter(seconds: float, fd: int | None = None) -> bool:
        asleep.release()
        go.acquire()
        return stop

    out = Output(sink.append, max_lines=10**6, max_bytes=10**9, waiter=waiter)
    ctx = Context(policy, AuditLog(policy.audit), {"client": "192.0.2.7"})
    results: list[Status] = []
    t = threading.Thread(target=lambda: results.append(serve(f"tail -F -n 0 {app}", ctx, out)))
    t.start()
    assert asleep.acquire(timeout=10)
    os.rename(app, e.root / "app.log.3")
    app.write_bytes(b"B: held the path briefly\n")
    os.rename(app, e.root / "b.txt")  # not admitted: *.log, *.log.[0-9], *.log.*.gz
    app.write_bytes(b"C: the new file\n")
    for _ in range(4):
        go.release()
        assert asleep.acquire(timeout=10)
    stop = True
    go.release()
    t.join(10)
    ctx.audit.close()
    assert b"".join(sink) == b"C: the new file\n"
    assert results and results[0].exit == Exit.OK
    end = [r for r in e.records() if r["event"] == "end"][-1]
    assert end["follow"] == "inotify"
