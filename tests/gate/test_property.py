"""Property: whatever the command line, the gate refuses it, or every descriptor it opens
is a regular file inside a policy root.

Checked on a real tree full of traps (symlinks to a secret, a symlinked directory, FIFO,
device node, hard link, /proc links, a sibling-prefix directory), for arbitrary text and
for text built from shell metacharacters, traversal pieces and those trap names.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from logtorukun.gate import grammar, runner
from logtorukun.gate.audit import AuditLog
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.output import Output
from logtorukun.gate.policy import Policy, parse_policy
from logtorukun.gate.runner import Context, Plan

MARKER = b"PROPERTY-SECRET-51c0"
REFUSALS = {Exit.BAD_REQUEST, Exit.REFUSED, Exit.NOT_FOUND}


class Tree:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "var/log/worker"
        self.real_root = os.path.realpath(self.root)
        self.secret = base / "secret/shadow"
        outside = base / "outside"
        sibling = base / "var/log/worker-secrets"
        for d in (self.root / "sub", self.secret.parent, outside, sibling, base / "state"):
            d.mkdir(parents=True)
        (base / "state").chmod(0o700)
        self.secret.write_bytes(MARKER + b"\n")
        (outside / "app.log").write_bytes(MARKER + b"\n")
        (sibling / "app.log").write_bytes(MARKER + b"\n")
        for rel in ("app.log", "sub/app.log", "app.log.1"):
            (self.root / rel).write_bytes(b"2024-12-17 14:00:00 INFO  [p] line\n" * 5)
        (self.root / "link.log").symlink_to(self.secret)
        (self.root / "dirlink").symlink_to(outside)
        (self.root / "proc.log").symlink_to(f"/proc/self/root{self.secret}")
        (self.root / "fd.log").symlink_to("/proc/self/fd/0")
        (self.root / "zero.log").symlink_to("/dev/zero")
        os.mkfifo(self.root / "fifo.log")
        os.mknod(self.root / "dev.log", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        linked = self.secret.with_name("linked")  # the secret itself keeps st_nlink == 1
        linked.write_bytes(MARKER + b"\n")
        os.link(linked, self.root / "hard.log")
        self.secret_ino = os.stat(self.secret).st_ino
        self.policy = self._policy()

    def _policy(self) -> Policy:
        text = f"""
[limits]
max_seconds = 2
follow_max_seconds = 0.05
state_dir = "{self.base}/state"
[audit]
destination = "file"
path = "{self.base}/audit.jsonl"
[programs]
journalctl = "/bin/echo"
docker = ["/bin/echo"]
[[files]]
root = "{self.root}"
patterns = ["*.log", "*.log.[0-9]", "*/*.log"]
[[journal]]
unit = "worker-service"
[[docker]]
container = "worker-container"
"""
        return parse_policy(tomllib.loads(text), "/property/policy.toml")

    def check_fds(self, plan: Plan) -> None:
        for fd in plan.fds:
            target = os.readlink(f"/proc/self/fd/{fd}")
            assert target.startswith(self.real_root + "/"), target
            st = os.fstat(fd)
            assert stat.S_ISREG(st.st_mode), target
            assert st.st_nlink == 1 and st.st_ino != self.secret_ino, target


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    yield Tree(tmp_path_factory.mktemp("property"))


# ---------------------------------------------------------------- strategies

NAMES = [
    "app.log",
    "app.log.1",
    "sub",
    "link.log",
    "dirlink",
    "fifo.log",
    "dev.log",
    "hard.log",
    "proc.log",
    "fd.log",
    "zero.log",
    "..",
    ".",
    "",
    "%2e%2e",
    "..%2f",
    "%2e%2e%2f",
    "\uff0e\uff0e",
    "\u0430pp.log",
    "secret",
    "shadow",
    "0",
    "self",
    "root",
    "fd",
    "\udcc0\udcae",
    "app.log\u200b",
    "-",
    "--",
    "*.log",
    "~",
]
TRAPS = [
    "app.log",
    "app.log.1",
    "sub/app.log",
    "link.log",
    "dirlink/app.log",
    "fifo.log",
    "dev.log",
    "hard.log",
    "proc.log",
    "fd.log",
    "zero.log",
    "nope.log",
    "sub/../app.log",
]
PREFIXES = [
    "{root}",
    "{root}-secrets",
    "{root}/sub",
    "{root}/dirlink",
    "/proc/self/root{root}",
    "/proc/self/fd",
    "/proc/self/cwd",
    "/etc",
    "/dev",
    "",
    "/",
    "{base}/secret",
    "{root}/",
]
VERBS = [
    "tail -n 3",
    "tail -F",
    "tail -f -n 0",
    "grep line",
    "grep -E 'l(i)ne'",
    "grep -v x",
    "grep -c -e -v",
    "grep -- -f",
    "head -n 2",
    "cat",
    "range --since 2024-12-17",
    "grep -i LINE",
    "grep line {path} | tail -n 1 &&",
    "journalctl -u",
    "docker logs",
    "sources",
    "help",
    "bridge",
    "tail",
    "tail --pid=1 -f",
    "tail -c 5",
    "grep -f",
    "grep -r x",
    "ls",
    "sh -c",
]
META = [
    "",
    " ",
    ";",
    "&&",
    "||",
    "|",
    "| tail -n 2",
    "$(",
    ")",
    "`",
    "${IFS}",
    "\n",
    "\r",
    "\t",
    ">",
    "<",
    "\x00",
    "'",
    '"',
    "\\",
    "#",
    "&",
    "\x1b[0m",
    "\u2028",
]


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.booleans()):  # near misses: a log or a trap right under the root
        return f"{{root}}/{draw(st.sampled_from(TRAPS))}"
    prefix = draw(st.sampled_from(PREFIXES))
    parts = draw(st.lists(st.sampled_from(NAMES), max_size=4))
    return "/".join([prefix, *parts]) if parts else prefix


FILE_VERBS = [
    "tail -n 3",
    "tail -F",
    "grep line",
    "grep -c -e -v",
    "grep -- -f",
    "head -n 2",
    "cat",
    "range --since 2024-12-17",
    "grep -E 'l(i)ne' -i",
]


@st.composite
def simple(draw: st.DrawFn) -> str:
    return f"{draw(st.sampled_from(FILE_VERBS))} {draw(paths())}"


@st.composite
def dirty(draw: st.DrawFn) -> str:
    verb = draw(st.sampled_from(VERBS))
    path = draw(paths())
    quote = draw(st.sampled_from(["", "'", '"']))
    words = [verb.replace("{path}", path), f"{quote}{path}{quote}"]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        words.append(draw(st.sampled_from(META)))
        words.append(draw(st.one_of(paths(), st.sampled_from(VERBS))))
    sep = draw(st.sampled_from([" ", " ", " ", "", "  "]))
    return sep.join(words)


def commands() -> st.SearchStrategy[str]:
    return st.one_of(simple(), dirty())


def fill(tree: Tree, command: str) -> str:
    return command.replace("{root}", str(tree.root)).replace("{base}", str(tree.base))


def authorize_or_refuse(tree: Tree, command: str) -> None:
    try:
        plan = runner.authorize(grammar.parse(command), tree.policy)
    except GateError as exc:
        assert exc.code in REFUSALS, (command, exc.code, exc.reason)
        assert exc.reason and "\n" not in exc.reason
        return
    try:
        tree.check_fds(plan)
    finally:
        plan.close()


# ---------------------------------------------------------------- properties

SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_text(tree: Tree, text: str) -> None:
    authorize_or_refuse(tree, text)


def every_trap(test: Any) -> Any:
    """Explicit examples, always run: each trap name under each kind of reader."""
    for trap in TRAPS:
        for verb in ("tail -n 3", "tail -F", "grep line", "cat", "range --since 2024-12-17"):
            test = example(command=f"{verb} {{root}}/{trap}")(test)
    return test


@SETTINGS
@given(command=commands())
@every_trap
def test_built_from_metacharacters_traversal_and_traps(tree: Tree, command: str) -> None:
    authorize_or_refuse(tree, fill(tree, command))


def test_the_generators_reach_every_trap_and_some_allowed_files(tree: Tree) -> None:
    """Guards the strategies: they must produce both opened files and each refusal kind."""
    seen: dict[str, int] = {}

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(command=commands())
    def probe(command: str) -> None:
        try:
            plan = runner.authorize(grammar.parse(fill(tree, command)), tree.policy)
        except GateError as exc:
            key = (
                exc.reason.split(": ", 1)[-1][:30]
                if exc.code != Exit.REFUSED
                else (
                    "link"
                    if "symbolic link" in exc.reason
                    else "hard"
                    if "hard links" in exc.reason
                    else "special"
                    if "not a regular file" in exc.reason
                    else "policy"
                )
            )
            seen[f"{exc.code} {key}"] = seen.get(f"{exc.code} {key}", 0) + 1
            return
        seen["fds" if plan.fds else "no-fds"] = seen.get("fds" if plan.fds else "no-fds", 0) + 1
        plan.close()

    probe()
    for kind in ("fds", "3 link", "3 special", "3 policy", "4 no such file"):
        assert seen.get(kind, 0) > 0, (kind, seen)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(command=st.one_of(commands(), st.text(max_size=80)))
@every_trap
def test_serve_runs_only_inside_the_root_and_never_sends_the_secret(
    tree: Tree, command: str
) -> None:
    """The whole request, run: the plan's fds are checked at the moment it starts."""
    command = fill(tree, command)
    sent: list[bytes] = []
    out = Output(sent.append, max_lines=1000, max_bytes=100_000)
    ctx = Context(tree.policy, AuditLog(tree.policy.audit))
    try:
        result = runner.serve(command, ctx, out, plan_hook=tree.check_fds)
    finally:
        ctx.audit.close()
    assert MARKER not in b"".join(sent)
    assert isinstance(result.exit, int) and "\n" not in result.reason
    if result.exit in REFUSALS:
        assert sent == []
