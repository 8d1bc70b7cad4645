"""Many workers from the web side: a hung host neither holds back a cross-host search nor
a read for longer than its request_timeout."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from logtorukun.config import FleetSettings, HostConfig
from logtorukun.web.access import source_from
from logtorukun.web.workers import ReadSpec, WorkerError, Workers
from tests.client.helpers import eventually
from tests.support.sshd import Worker
from tests.web.support import running, with_hung_host, write_config


async def test_a_read_past_request_timeout_is_504(web_worker: Worker) -> None:
    w = web_worker
    host = HostConfig(
        name="w",
        address=w.host,
        port=w.port,
        user=w.user,
        key=w.client_key,
        known_hosts=w.known_hosts,
    )
    workers = Workers((host,), fleet=FleetSettings(idle_timeout=0))
    quick = replace(host, request_timeout=0.5)
    try:
        src = source_from(path=str(w.app_log))
        data, outcome = await workers.read(host, ReadSpec("tail", src, lines=2), {"user": "t"})
        assert data.count(b"\n") == 2 and outcome.exit == 0
        with pytest.raises(WorkerError) as info:  # a follow never ends by itself
            await workers.read(quick, ReadSpec("follow", src), {"user": "t"})
        assert info.value.status == 504 and "request_timeout" in info.value.reason
        bridge = await workers.client.pool.get("w").bridge()
        await eventually(lambda: bridge.in_flight == 0, timeout=30)  # cancelled there, too
    finally:
        await workers.close()


def test_search_streams_other_hosts_while_one_hangs(
    tmp_path: Path, web_worker: Worker, silent: socket.socket
) -> None:
    path = with_hung_host(write_config(tmp_path, web_worker), web_worker, silent)
    with running(path) as live:
        c = live.client("olivia")
        params = {"hosts": "web*", "path": f"{web_worker.root}/app.log", "pattern": "80412"}
        events = []
        with c.stream("GET", "/api/search", params=params, timeout=60) as r:
            lines = r.iter_lines()
            for line in lines:
                events.append(json.loads(line))
                done = {e["host"] for e in events if e["type"] == "progress"}
                if done == {"web1", "web2"}:
                    break
            # web1 and web2 answered in full; web-hung is still in its SSH handshake
            assert [e for e in events if e.get("host") == "web-hung"] == []
            files = [e for e in events if e["type"] == "file"]
            assert sorted(e["host"] for e in files) == ["web1", "web2"]
            assert all(any("80412" in x for x in e["lines"]) for e in files)
            silent.close()
            events += [json.loads(line) for line in lines]
        hung = [e for e in events if e.get("host") == "web-hung" and e["type"] == "error"]
        assert len(hung) == 1 and hung[0]["status"] == 502
        assert events[-1]["type"] == "end" and events[-1]["errors"] == 1
