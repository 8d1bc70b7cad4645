"""Many workers: bounded handshakes, idle connections closed, cross-host grep that streams
each host's lines as they come and never waits for a hung or slow host."""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from logtorukun.cli.logs import Printer, grep_hosts
from logtorukun.client import Client
from logtorukun.client.command_line import line_for
from logtorukun.config import FleetSettings, load_config
from logtorukun.gate.vocabulary import Grep, Tail
from tests.client.helpers import FAST, eventually, gate_pids, host_for, write_config
from tests.conftest import MakeWorker
from tests.support.sshd import Worker

IDLE = replace(FAST, idle_timeout=0.5)


async def test_idle_connection_is_closed_on_both_ends_and_reopened(mine: Worker) -> None:
    loop = asyncio.get_running_loop()
    async with Client([host_for(mine)], options=IDLE) as c:
        hc = c.pool.get("w")
        before = loop.time()
        assert (await c.tail("w", str(mine.app_log), 3)).data.count(b"\n") == 3
        assert hc.connected and gate_pids(mine)
        await eventually(lambda: not hc.connected, timeout=30)
        assert loop.time() - before >= IDLE.idle_timeout
        assert hc.idle_closes == 1
        # the worker's side went too: no bridge gate (nor its sshd session) left behind
        await eventually(lambda: not gate_pids(mine), timeout=30)
        assert (await c.tail("w", str(mine.app_log), 2)).data.count(b"\n") == 2
        assert hc.connects == 2


async def test_a_running_follow_keeps_its_connection(worker: Worker, mine: Worker) -> None:
    hosts = [host_for(mine, "a"), host_for(worker, "b")]
    async with Client(hosts, options=IDLE) as c:
        follow = await c.follow("a", str(mine.app_log), lines=1)
        async with follow:
            lines = follow.lines()
            assert (await anext(lines)).endswith(b"\n")
            await c.tail("b", str(worker.app_log), 1)  # used after the follow started
            b = c.pool.get("b")
            await eventually(lambda: not b.connected, timeout=30)  # b idle for idle_timeout ...
            a = c.pool.get("a")
            assert a.connected and a.idle_closes == 0  # ... a was busy all along
            with mine.app_log.open("a") as f:
                f.write("2024-12-17 16:00:00 INFO still following\n")
            assert await anext(lines) == b"2024-12-17 16:00:00 INFO still following\n"
        await eventually(lambda: not a.connected, timeout=30)
        assert a.idle_closes == 1


async def test_handshakes_are_bounded_so_a_stock_sshd_drops_none(
    make_worker: MakeWorker,
) -> None:
    # sshd's stock MaxStartups 10:30:100 drops 30 % of new connections once 10 are
    # unauthenticated: 40 hosts behind one sshd (a bastion) all at once would lose some.
    w = make_worker(name="stock-startups", sshd_options=["MaxStartups 10:30:100"])
    hosts = [host_for(w, f"h{i}") for i in range(40)]
    options = replace(FAST, max_connecting=4)
    async with Client(hosts, options=options) as c:
        replies = await asyncio.gather(*(c.tail(h.name, str(w.app_log), 1) for h in hosts))
        assert all(r.data.endswith(b"\n") for r in replies)
        assert c.pool.handshakes.peak == 4 and c.pool.handshakes.now == 0
        assert c.pool.connected == 40
    assert "drop connection" not in w.sshd_log()


async def test_grep_hosts_streams_each_host_while_one_hangs(
    capsys: pytest.CaptureFixture[str], worker: Worker, silent: socket.socket
) -> None:
    port = silent.getsockname()[1]
    hung = replace(host_for(worker, "hung"), port=port, connect_timeout=120.0)
    hosts = [hung, host_for(worker, "a"), host_for(worker, "b")]
    want = worker.app_log.read_text().count("order 80412")
    out = io.StringIO()
    async with Client(hosts, options=FAST) as c:
        command = line_for(Grep(str(worker.app_log), "order 80412"))
        task = asyncio.create_task(
            grep_hosts(c, hosts, command, Printer(argparse.Namespace(raw=False, color=False), out))
        )
        # a's and b's lines are out while `hung` is still in its SSH handshake
        await eventually(lambda: out.getvalue().count("order 80412") == 2 * want, timeout=30)
        assert not task.done()
        names = sorted({ln.split(":")[0] for ln in out.getvalue().splitlines()})
        assert names == ["a", "b"]
        silent.close()  # the hung sshd goes away: its host fails, alone
        assert await asyncio.wait_for(task, 30) == 1
    err = capsys.readouterr().err
    assert "hung:" in err and "grep: 3 hosts, 2 answered, 1 failed (hung)" in err


async def test_grep_hosts_gives_up_on_a_host_after_its_request_timeout(
    capsys: pytest.CaptureFixture[str], mine: Worker
) -> None:
    # a follow never ends by itself: the host's request_timeout ends it, and only it
    slow = host_for(mine, "slow", request_timeout=2.0)
    async with Client([slow], options=FAST) as c:
        await c.tail("slow", str(mine.app_log), 1)  # warm: the follow's line comes at once
        out = io.StringIO()
        command = line_for(Tail(str(mine.app_log), 1, follow=True))
        code = await asyncio.wait_for(
            grep_hosts(
                c, [slow], command, Printer(argparse.Namespace(raw=False, color=False), out)
            ),
            30,
        )
        assert code == 1
        assert out.getvalue().count("\n") == 1  # the line that came is kept
        bridge = await c.pool.get("slow").bridge()
        await eventually(lambda: bridge.in_flight == 0, timeout=30)  # cancelled on the worker
    err = capsys.readouterr().err
    assert "slow: no end within 2 s (request_timeout)" in err


async def test_at_once_bounds_the_hosts_worked_on(
    capsys: pytest.CaptureFixture[str], worker: Worker, silent: socket.socket
) -> None:
    # with one host at a time, a hung first host holds back the second: the bound holds
    port = silent.getsockname()[1]
    hung = replace(host_for(worker, "hung"), port=port, connect_timeout=120.0)
    hosts = [hung, host_for(worker, "a")]
    out = io.StringIO()
    async with Client(hosts, options=FAST) as c:
        command = line_for(Grep(str(worker.app_log), "order 80412"))
        task = asyncio.create_task(
            grep_hosts(
                c,
                hosts,
                command,
                Printer(argparse.Namespace(raw=False, color=False), out),
                at_once=1,
            )
        )
        await eventually(lambda: c.pool.handshakes.now == 1)
        assert c.pool.get("a").connects == 0 and not c.pool.get("a").connected
        silent.close()
        assert await asyncio.wait_for(task, 30) == 1
    want = [ln for ln in worker.app_log.read_text().splitlines() if "order 80412" in ln]
    assert out.getvalue() == "".join(f"a:    {ln}\n" for ln in want)
    capsys.readouterr()


def test_fleet_settings_from_the_config(tmp_path: Path, worker: Worker) -> None:
    path = write_config(tmp_path / "server.toml", [host_for(worker)])
    text = path.read_text()
    path.write_text("[fleet]\nmax_connecting = 5\nmax_hosts_at_once = 7\nidle_timeout = 9\n" + text)
    config = load_config(path)
    assert config.fleet == FleetSettings(max_connecting=5, max_hosts_at_once=7, idle_timeout=9.0)
    pool = Client(config).pool
    assert (pool.options.max_connecting, pool.options.idle_timeout) == (5, 9.0)
    path.write_text("[fleet]\nmax_connecting = 0\n" + text)
    with pytest.raises(Exception, match=r"server.toml:2: \[fleet\] max_connecting: 0 is out"):
        load_config(path)
    path.write_text("[fleet]\nidle_time = 3\n" + text)
    with pytest.raises(Exception, match=r"\[fleet\] idle_time: unknown key"):
        load_config(path)
