"""The typed API against a real sshd + gate, through the bridge and in one-shot form."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from logtorukun.client import (
    Client,
    GateRefused,
    InvalidArgument,
    LimitHit,
    NotFound,
    RequestTimeout,
    UnknownHost,
)
from logtorukun.client import errors as client_errors
from logtorukun.client.command_line import line_for, quote_command
from logtorukun.gate.errors import Exit
from logtorukun.gate.vocabulary import Docker, Grep, Journal, Range, Tail
from tests.client.helpers import eventually
from tests.support.sshd import Worker

INJECTION = "'; cat /etc/passwd; echo '"


def _requests(w: Worker) -> int:
    return sum(1 for r in w.audit_records() if r.get("event") == "request")


def _lines(w: Worker) -> list[bytes]:
    return w.app_log.read_bytes().splitlines(keepends=True)


@pytest.fixture(params=["bridge", "oneshot"])
def both(request: pytest.FixtureRequest, client: Client, oneshot: Client) -> Client:
    return client if request.param == "bridge" else oneshot


async def test_tail_is_the_end_of_the_file(both: Client, worker: Worker) -> None:
    reply = await both.tail("w", str(worker.app_log), 200)
    assert reply.data == b"".join(_lines(worker)[-200:])
    assert (reply.status.exit, reply.status.lines, reply.truncated) == (0, 200, False)
    assert reply.status.bytes == len(reply.data)


async def test_grep_fixed_string_last_matches(both: Client, worker: Worker) -> None:
    reply = await both.grep("w", str(worker.app_log), "charge failed", last=3)
    want = [ln for ln in _lines(worker) if b"charge failed" in ln][-3:]
    assert reply.data == b"".join(want) and len(want) == 3


async def test_grep_options(both: Client, worker: Worker) -> None:
    path = str(worker.app_log)
    count = await both.grep("w", path, "error", ignore_case=True, count=True)
    assert int(count.data) == sum(1 for ln in _lines(worker) if b"error" in ln.lower())
    regex = await both.grep("w", path, r"order 8[0-9]{4}", regex=True, max_count=2)
    want = [ln for ln in _lines(worker) if re.search(rb"order 8[0-9]{4}", ln)][:2]
    assert regex.data == b"".join(want) and len(want) == 2
    inverted = await both.grep("w", path, "INFO", invert=True, max_count=5)
    assert len(inverted.data.splitlines()) == 5 and b"INFO" not in inverted.data


@pytest.mark.parametrize(
    "pattern",
    [INJECTION, "$(id)", "`id`", "${IFS}x", "-f /etc/passwd", "--include=*", "a|b", "x' 'y", "\\"],
)
async def test_hostile_patterns_are_searched_for_literally(
    client: Client, worker: Worker, pattern: str
) -> None:
    before = len(worker.audit_records())
    reply = await client.grep("w", str(worker.app_log), pattern)
    assert (reply.status.exit, reply.data) == (0, b"")  # searched for, found nowhere
    assert worker.secret_marker.encode() not in reply.data
    record = [r for r in worker.audit_since(before) if r.get("event") == "request"][-1]
    assert record["decision"] == "allow"
    # What the gate received splits back into exactly the words we meant.
    assert shlex.split(record["command"]) == ["grep", "-F", "-e", pattern, str(worker.app_log)]


async def test_range_is_a_time_window(both: Client, worker: Worker) -> None:
    reply = await both.range("w", str(worker.app_log), "2024-12-17 14:00", "2024-12-17 14:05")
    lines = reply.text.splitlines()
    stamped = [ln for ln in lines if ln[:4] == "2024"]
    assert stamped and all("2024-12-17 14:00" <= ln[:16] < "2024-12-17 14:05" for ln in stamped)
    assert "Traceback (most recent call last):" in lines  # the trace stays with its line


async def test_head_and_cat(both: Client, worker: Worker) -> None:
    head = await both.head("w", str(worker.app_log), 3)
    assert head.data == b"".join(_lines(worker)[:3])
    cat = await both.head("w", str(worker.app_log))
    assert cat.data == worker.app_log.read_bytes()


async def test_sources_are_typed(both: Client, worker: Worker) -> None:
    src = await both.sources("w")
    paths = {f.path: f for f in src.files}
    assert set(paths) == {str(worker.root / n) for n in ("app.log", "app.log.1", "app.log.2.gz")}
    app = paths[str(worker.app_log)]
    assert app.size == worker.app_log.stat().st_size and not app.compressed
    assert paths[str(worker.root / "app.log.2.gz")].compressed
    assert src.gate and src.units == () and src.limits["max_lines"] == 10_000


async def test_refused_and_not_found(both: Client, worker: Worker) -> None:
    with pytest.raises(GateRefused) as refused:
        await both.tail("w", str(worker.secret_path), 5)
    assert refused.value.gate_exit == Exit.REFUSED == refused.value.exit_code
    assert "not allowed by the policy" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(NotFound) as missing:
        await both.tail("w", str(worker.root / "gone.log"), 5)
    assert missing.value.gate_exit == Exit.NOT_FOUND
    with pytest.raises(GateRefused) as bad:
        await both.run("w", "tail -n 5 /var/log/../etc/shadow")
    assert bad.value.gate_exit == Exit.BAD_REQUEST and "'..'" in bad.value.reason


async def test_truncation_is_reported_not_hidden(both: Client, worker: Worker) -> None:
    with worker.policy(worker.default_policy(max_lines=50)):
        reply = await both.tail("w", str(worker.app_log), 200)
    assert reply.truncated and reply.status.exit == Exit.LIMIT
    assert reply.data == b"".join(_lines(worker)[-50:])
    assert "max_lines is 50" in reply.status.reason
    err = reply.limit_error()
    assert isinstance(err, LimitHit) and err.partial == reply.data and err.exit_code == 5


async def test_via_reaches_the_gate_audit(client: Client, worker: Worker) -> None:
    via = {"user": "alice", "audit": "rec-42", "roles": ["ops"]}
    await client.tail("w", str(worker.app_log), 1, via=via)
    record = [r for r in worker.audit_records() if r.get("event") == "request"][-1]
    assert record["via"] == via and record["mode"] == "bridge"


async def test_oneshot_cannot_carry_via(oneshot: Client, worker: Worker) -> None:
    with pytest.raises(ValueError, match="needs the bridge"):
        await oneshot.tail("w", str(worker.app_log), 1, via={"user": "alice"})


@pytest.mark.parametrize(
    "call",
    [
        lambda c, w: c.tail("w", "var/log/x.log", 5),
        lambda c, w: c.tail("w", str(w.app_log) + "\n/etc/passwd", 5),
        lambda c, w: c.grep("w", str(w.app_log), "a\rb"),
        lambda c, w: c.grep("w", str(w.app_log), "x\x00"),
        lambda c, w: c.grep("w", str(w.app_log), ""),
        lambda c, w: c.tail("w", str(w.app_log), -1),
        lambda c, w: c.tail("w", str(w.app_log), True),
        lambda c, w: c.journal("w", "x + _SYSTEMD_UNIT=sshd.service"),
        lambda c, w: c.docker_logs("w", "-f"),
        lambda c, w: c.tail("w", str(w.app_log), 1, via={"x": object()}),
    ],
)
async def test_invalid_arguments_never_leave_the_client(
    client: Client, worker: Worker, call: Any
) -> None:
    before = _requests(worker)
    with pytest.raises(InvalidArgument):
        await call(client, worker)
    assert _requests(worker) == before


async def test_unknown_host(client: Client) -> None:
    with pytest.raises(UnknownHost, match=r"unknown host 'nope' \(configured: w\)"):
        await client.tail("nope", "/var/log/x.log", 1)


async def test_request_timeout_cancels_the_request(client: Client, worker: Worker) -> None:
    # The bridge is up first: the REQUEST frame then goes out at once, and the gate reads
    # it before the CANCEL that the timeout sends (frames arrive in order).
    await client.tail("w", str(worker.app_log), 1)
    before = len(worker.audit_records())
    command = line_for(Tail(str(worker.app_log), 1, follow=True))
    with pytest.raises(RequestTimeout, match="request_timeout"):
        await client.run("w", command, timeout=0.3)

    def ends() -> list[dict[str, Any]]:  # the gate ends the follow and writes its end
        recs = worker.audit_since(before)
        ids = {r["id"] for r in recs if r["event"] == "request" and r["command"] == command}
        return [r for r in recs if r["event"] == "end" and r["id"] in ids]

    (end,) = await eventually(ends, timeout=20)
    assert end["exit"] == 0 and end["reason"] == "client went away"


async def test_journal_and_docker_go_through_the_policy(both: Client) -> None:
    with pytest.raises(GateRefused, match="unit 'worker-service' is not allowed"):
        await both.journal("w", "worker-service", lines=10)
    with pytest.raises(GateRefused, match="container 'app' is not allowed"):
        await both.docker_logs("w", "app", tail=10)


def test_command_builders_quote_every_value() -> None:
    assert line_for(Tail("/var/log/a b.log", 5)) == "tail -n 5 '/var/log/a b.log'"
    assert line_for(Tail("/l/a.log", 0, follow=True)) == "tail -F -n 0 /l/a.log"
    assert line_for(Tail("/l/a.log", 0, follow=True, start=(12, 2**40, 7))) == (
        "tail -F -n 0 --from 12:1099511627776:7 /l/a.log"
    )
    for bad in ((-1, 0, None), (1, 10**20, None), (True, 1, 7), (1, 2, 2**32), (1, 2, -1), (1, 2)):
        with pytest.raises(InvalidArgument, match="start must be"):
            line_for(Tail("/l/a.log", 0, follow=True, start=bad))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="only goes with a follow"):
        line_for(Tail("/l/a.log", 5, start=(1, 2, None)))
    assert line_for(Grep("/l/a.log", "-v", ignore_case=True, tail=10)) == (
        "grep -F -i -e -v /l/a.log | tail -n 10"
    )
    assert line_for(Grep("/l/a.log", INJECTION)) == (
        "grep -F -e ''\"'\"'; cat /etc/passwd; echo '\"'\"'' /l/a.log"
    )
    assert line_for(Range("/l/a.log", "2024-12-17 14:00", max_lines=5)) == (
        "range '--since=2024-12-17 14:00' -m 5 /l/a.log"
    )
    assert line_for(Journal("worker-service", since="-1h", grep="-x", follow=True)) == (
        "journalctl -u worker-service --since=-1h --grep=-x -o short-iso -f"
    )
    assert line_for(Docker("app", tail=5, timestamps=True)) == (
        "docker logs --tail 5 --timestamps -- app"
    )
    with pytest.raises(InvalidArgument):
        quote_command(["tail", "-n", "1", "/x\n"])


def test_exit_codes_are_the_gates() -> None:
    names = [n for n in vars(Exit) if n.isupper()]
    assert names
    assert vars(client_errors)["Exit"] is Exit  # one table, shared (gate/vocabulary.py)
