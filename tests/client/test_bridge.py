"""The bridge: many requests over one channel, each one checked and audited like a one-shot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import pytest

from logtorukun.client import (
    Busy,
    Client,
    ConnectionLost,
    GateExitError,
    GateRefused,
    PoolOptions,
    Position,
    ProtocolError,
)
from logtorukun.client.command_line import line_for
from logtorukun.gate.protocol import MAX_DATA, WINDOW
from logtorukun.gate.vocabulary import Tail
from tests.client.helpers import FAST, eventually, gate_pids, host_for, records
from tests.conftest import MakeWorker
from tests.support.sshd import Worker

STOCK_SSHD = ["MaxSessions 10", "MaxStartups 10:30:100"]  # sshd's own defaults


async def test_500_concurrent_requests_one_channel_stock_max_sessions(
    make_worker: MakeWorker,
) -> None:
    w = make_worker(name="stock", sshd_options=STOCK_SSHD)
    want = b"".join(w.app_log.read_bytes().splitlines(keepends=True)[-20:])
    async with Client([host_for(w)], options=FAST) as c:
        replies = await asyncio.gather(
            *(c.tail("w", str(w.app_log), 20) for _ in range(500)), return_exceptions=True
        )
        failures = [r for r in replies if isinstance(r, BaseException)]
        assert failures == []
        assert all(r.data == want for r in replies if not isinstance(r, BaseException))
        hc = c.pool.get("w")
        assert hc.connects == 1 and hc._bridge is not None and hc._bridge.requests == 500
    assert len(records(w, "session_start")) == 1  # one gate process served them all
    assert len(records(w, "request", decision="allow", mode="bridge")) == 500


async def test_oneshot_stays_under_max_sessions(make_worker: MakeWorker) -> None:
    """Why the bridge: channels per connection are capped; the pool queues rather than fail."""
    w = make_worker(name="stock1", sshd_options=STOCK_SSHD)
    # More gate slots than sshd's MaxSessions 10, so that sshd is what refuses
    w.write_policy(w.default_policy(max_concurrent=12))
    path = str(w.app_log)
    greedy = PoolOptions(max_sessions=40)
    # Follows hold their sessions open: quick tails could end (and free their sessions)
    # within the pool's retries on a loaded machine, and then sshd never refuses one.
    async with Client([host_for(w)], oneshot=True, options=greedy) as c:
        opened = await asyncio.gather(
            *(c.follow("w", path, lines=1) for _ in range(40)), return_exceptions=True
        )
        for s in opened:
            if not isinstance(s, BaseException):
                await s.aclose()
    refused = [r for r in opened if isinstance(r, Busy)]
    assert len(refused) == 30 and "sshd refused another session" in str(refused[0])
    assert [r for r in opened if isinstance(r, BaseException) and not isinstance(r, Busy)] == []
    async with Client([host_for(w)], oneshot=True, options=FAST) as c:  # max_sessions=8
        replies = await asyncio.gather(
            *(c.tail("w", path, 5) for _ in range(40)), return_exceptions=True
        )
    assert [r for r in replies if isinstance(r, BaseException)] == []


async def test_cancelling_one_follow_leaves_the_others(mine: Worker) -> None:
    a, b = mine.root / "fa.log", mine.root / "fb.log"
    a.write_text("a0\n")
    b.write_text("b0\n")
    try:
        async with Client([host_for(mine)], options=FAST) as c:
            sa = await c.follow("w", str(a), lines=1)
            sb = await c.follow("w", str(b), lines=1)
            assert await sa.read() == b"a0\n" and await sb.read() == b"b0\n"
            await sa.aclose()
            with open(b, "a") as f:
                f.write("b1\n")
            assert await asyncio.wait_for(sb.read(), 5) == b"b1\n"
            bridge = c.pool.get("w")._bridge
            assert bridge is not None
            await eventually(lambda: bridge.in_flight == 1)
            end = await eventually(lambda: records(mine, "end", reason="client went away"))
            assert end[-1]["lines"] == 1
            # the bridge still serves new requests while sb runs
            assert (await c.tail("w", str(a), 1)).data == b"a0\n"
            with open(b, "a") as f:
                f.write("b2\n")
            assert await asyncio.wait_for(sb.read(), 5) == b"b2\n"
            await sb.aclose()
    finally:
        a.unlink()
        b.unlink()


async def test_slow_reader_holds_back_the_worker_not_memory(mine: Worker) -> None:
    big = mine.root / "big.log"
    line = b"x" * 999 + b"\n"
    big.write_bytes(line * 8_000)  # 8 MB in 8000 lines: under the policy's caps
    try:
        async with Client([host_for(mine)], options=FAST) as c:
            stream = await c.stream("w", f"cat {big}")
            first = await stream.read()
            await asyncio.sleep(0.5)  # a stalled consumer
            # The gate sent at most one window; nothing more arrived while we slept.
            assert stream.received <= WINDOW and stream.max_buffered <= WINDOW
            assert not records(mine, "end", bytes=len(line) * 8_000)  # cat still running
            other = await c.tail("w", str(mine.app_log), 5)  # others are not stuck behind it
            assert other.status.exit == 0
            assert not records(mine, "end", bytes=len(line) * 8_000)  # answered while cat waits
            rest = await stream.read_all()
            assert first + rest == big.read_bytes()
            assert stream.max_buffered <= WINDOW + MAX_DATA
    finally:
        big.unlink()


async def test_slow_reader_oneshot_uses_the_channel_window(mine: Worker) -> None:
    big = mine.root / "big1.log"
    big.write_bytes((b"y" * 999 + b"\n") * 8_000)
    try:
        async with Client([host_for(mine)], oneshot=True, options=FAST) as c:
            stream = await c.stream("w", f"cat {big}")
            await stream.read()
            await asyncio.sleep(0.5)
            assert stream.received < 4 * WINDOW  # 8 MB file; SSH window + pipes hold less
            await stream.aclose()
    finally:
        big.unlink()


async def test_rotation_during_a_follow_loses_and_repeats_nothing(mine: Worker) -> None:
    log = mine.root / "rot.log"
    log.write_text("")
    total, every = 300, 100
    got: list[str] = []

    def delivered(n: int) -> None:
        want = f"line {n:05d}\n"
        deadline = time.monotonic() + 15
        while want not in got:
            assert time.monotonic() < deadline, f"{want!r} never arrived"
            time.sleep(0.005)

    def writer() -> None:
        # logrotate `create`: rename away, the app writes a few more lines to the old
        # file until it reopens. The next rotation waits until the follower has read the
        # new file: two inside one poll of the gate would skip a whole file, as with any
        # polling `tail -F`.
        f = open(log, "a")  # noqa: SIM115
        i = 0
        first_new: int | None = None
        while i < total:
            f.write(f"line {i:05d}\n")
            f.flush()
            if i == first_new:
                delivered(i)
            i += 1
            if i % every == 0 and i < total:
                os.rename(log, mine.root / "rot.log.1")
                for _ in range(5):
                    f.write(f"line {i:05d}\n")
                    f.flush()
                    i += 1
                f.close()
                f = open(log, "a")  # noqa: SIM115
                first_new = i
            time.sleep(0.001)
        f.close()

    async def read(stream: Any) -> None:
        async for ln in stream.lines():
            got.append(ln.decode())
            if ln == f"line {total - 1:05d}\n".encode():
                return

    try:
        async with Client([host_for(mine)], options=FAST) as c:
            stream = await c.follow("w", str(log), lines=0)
            reader = asyncio.create_task(read(stream))
            t = threading.Thread(target=writer)
            try:
                async with asyncio.timeout(30):
                    # A follow from the end reads what is written after it started: probe
                    # until a line arrives, then the writer starts.
                    while not got:
                        with open(log, "a") as probe:
                            probe.write("probe\n")
                        await asyncio.sleep(0.05)
                    t.start()
                    await reader
            finally:
                reader.cancel()
                if t.ident is not None:  # started
                    t.join()
                await stream.aclose()
        probes = got.index("line 00000\n")
        assert set(got[:probes]) == {"probe\n"}
        assert got[probes:] == [f"line {i:05d}\n" for i in range(total)]
    finally:
        for p in (log, mine.root / "rot.log.1"):
            p.unlink(missing_ok=True)


def _same(r: dict[str, Any]) -> dict[str, Any]:
    volatile = {"ts", "id", "mode", "duration_ms", "client_port", "via"}
    return {k: v for k, v in r.items() if k not in volatile}


async def test_bridge_and_oneshot_share_one_code_path(
    client: Client, oneshot: Client, worker: Worker
) -> None:
    """Same answer, same exit, same reason and the same audit records in both forms."""
    app, sec = str(worker.app_log), str(worker.secret_path)
    commands = [
        f"tail -n 3 {app}",
        f"grep 'ERROR' {app} | tail -n 2",
        f"grep -c -i warn {app}",
        f"range --since '2024-12-17 14:03' --until '2024-12-17 14:04' {app}",
        f"tail -n 20000 {app}",
        f"tail -n 5 {sec}",
        f"tail -n 5 {worker.root}/nope.log",
        f"tail -n 5 {worker.root}/notes.txt",
        "tail -n 5 /var/log/../etc/shadow",
        f"cat {app}; id",
        "sources",
        "help",
    ]
    with worker.policy(worker.default_policy(max_lines=500)):
        for command in commands:
            outcomes = []
            for c in (client, oneshot):
                before = len(worker.audit_records())
                try:
                    reply = await c.run("w", command)
                    outcome: tuple[Any, ...] = (reply.status.exit, reply.status.reason, reply.data)
                except GateExitError as exc:
                    outcome = (exc.gate_exit, exc.reason, b"")
                # The gate writes its records before it answers: they are all there now.
                assert len(worker.audit_records()) > before
                new = [r for r in worker.audit_since(before) if "command" in r or "exit" in r]
                new = [r for r in new if r.get("event") in ("request", "end")]
                outcomes.append((outcome, [_same(r) for r in new]))
            (bridge_out, bridge_audit), (one_out, one_audit) = outcomes
            assert bridge_out == one_out, command
            assert bridge_audit == one_audit, command
            assert worker.secret_marker.encode() not in bridge_out[2]


async def test_max_concurrent_slots_apply_inside_the_bridge(mine: Worker) -> None:
    with mine.policy(mine.default_policy(max_concurrent=1)):
        async with Client([host_for(mine)], options=FAST) as c:
            follow = await c.follow("w", str(mine.app_log), lines=1)
            assert await follow.read()
            with pytest.raises(Busy) as busy:
                await c.grep("w", str(mine.app_log), "ERROR")
            assert busy.value.gate_exit == 6
            assert (await c.tail("w", str(mine.app_log), 1)).status.exit == 0  # needs no slot
            await follow.aclose()
            reply = await _retry_busy(lambda: c.grep("w", str(mine.app_log), "ERROR", count=True))
            assert int(reply.data) > 0


async def _retry_busy(call: Any) -> Any:
    for _ in range(100):
        try:
            return await call()
        except Busy:
            await asyncio.sleep(0.05)
    return await call()


async def test_a_killed_bridge_fails_its_requests_and_is_restarted(mine: Worker) -> None:
    async with Client([host_for(mine)], options=FAST) as c:
        stream = await c.follow("w", str(mine.app_log), lines=1)
        assert await stream.read()
        pids = await eventually(lambda: gate_pids(mine))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # its shell ends with it
                os.kill(pid, 9)
        with pytest.raises(ConnectionLost, match="bridge"):
            await asyncio.wait_for(stream.read_all(), 5)
        reply = await c.tail("w", str(mine.app_log), 2)  # a new bridge, same connection
        assert reply.status.exit == 0 and c.pool.get("w").connects == 1


async def test_a_killed_oneshot_gate_is_connection_lost_not_a_refusal(mine: Worker) -> None:
    async with Client([host_for(mine)], oneshot=True, options=FAST) as c:
        stream = await c.follow("w", str(mine.app_log), lines=1)
        assert await stream.read()
        for pid in await eventually(lambda: gate_pids(mine)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        with pytest.raises(ConnectionLost, match=r"the gate died|killed"):
            await asyncio.wait_for(stream.read_all(), 5)
        assert (await c.tail("w", str(mine.app_log), 1)).status.exit == 0


async def test_broken_policy_refuses_the_bridge_with_the_gate_reason(mine: Worker) -> None:
    async with Client([host_for(mine)], options=FAST) as c:
        with mine.policy("[limits\n"):
            with pytest.raises(GateRefused) as exc:
                await c.tail("w", str(mine.app_log), 1)
            assert exc.value.gate_exit == 7 and str(mine.policy_path) in exc.value.reason
        await asyncio.sleep(FAST.backoff_min)
        assert (await c.tail("w", str(mine.app_log), 1)).status.exit == 0


@pytest.mark.parametrize(
    ("forced", "match"),
    [
        ("/bin/true", "before its HELLO"),
        ("/bin/echo this is not a bridge frame at all", "framing"),
    ],
)
async def test_something_else_than_a_bridge_is_a_protocol_error(
    make_worker: MakeWorker, forced: str, match: str
) -> None:
    w = make_worker(name="notabridge", command=forced)
    async with Client([host_for(w)], options=FAST) as c:
        with pytest.raises(ProtocolError, match=match):
            await c.tail("w", str(w.app_log), 1)


async def test_a_follow_resumes_after_a_killed_bridge_without_loss_or_repeat(
    mine: Worker,
) -> None:
    """Load, then follow from where the load ended; kill the bridge; continue from the
    last position read: every line written meanwhile arrives exactly once."""
    log = mine.root / "resume.log"
    log.write_bytes(b"".join(b"old %d\n" % i for i in range(5)))
    written: list[bytes] = []

    def write(n: int) -> None:
        with open(log, "ab") as f:
            for _ in range(n):
                line = b"new %d\n" % len(written)
                written.append(line)
                f.write(line)

    try:
        async with Client([host_for(mine)], options=FAST) as c:
            loaded = await c.run("w", line_for(Tail(str(log), 3)))
            assert loaded.status.pos is not None
            assert loaded.status.pos[:2] == (log.stat().st_ino, log.stat().st_size)
            write(4)  # between the load and the follow
            got = bytearray()
            cmd = line_for(Tail(str(log), 0, follow=True, start=loaded.status.pos))
            stream = await c.stream("w", cmd, positions=True)
            last = None
            size = log.stat().st_size
            while last is None or last.off < size:  # the position after the data is sent
                item = await asyncio.wait_for(stream.read_item(), 5)
                if isinstance(item, Position):
                    last = item
                else:
                    got += item
            assert bytes(got) == b"".join(written) and last.off == size and not last.gap
            for pid in await eventually(lambda: gate_pids(mine)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with pytest.raises(ConnectionLost):
                while True:
                    item = await asyncio.wait_for(stream.read_item(), 5)
                    if isinstance(item, Position):
                        last = item
                    else:
                        got += item
            write(3)  # while nobody follows
            cmd = line_for(Tail(str(log), 0, follow=True, start=last.start))
            stream = await c.stream("w", cmd, positions=True)
            while len(got) < sum(map(len, written)):
                got += await asyncio.wait_for(stream.read(), 5)
            assert bytes(got) == b"".join(written)
            assert stream.position is not None and stream.position.off <= log.stat().st_size
            await stream.aclose()
    finally:
        log.unlink()
