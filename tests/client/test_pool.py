"""The pool against real sshd workers: drops, reconnects, host keys, auth, timeouts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from logtorukun.client import (
    AuthRefused,
    Client,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    PoolOptions,
    Unreachable,
)
from logtorukun.client.errors import KeyFileError
from logtorukun.config import HostConfig
from logtorukun.ops.system import descendants, keygen
from tests.client.helpers import FAST, eventually, host_for, records
from tests.conftest import MakeWorker
from tests.support.sshd import SSH_KEYGEN, Worker


def _accepted(w: Worker) -> int:
    return w.sshd_log().count("Accepted publickey")


async def test_a_dead_worker_fails_alone_and_the_pool_reconnects(make_worker: MakeWorker) -> None:
    a, b = make_worker(name="pa"), make_worker(name="pb")
    big = a.root / "big.log"
    big.write_bytes((b"z" * 999 + b"\n") * 4000)
    async with Client([host_for(a, "a"), host_for(b, "b")], options=FAST) as c:
        mid_request = await c.stream("a", f"cat {big}")  # held mid-way by its credit window
        assert await mid_request.read()
        follow_a = await c.follow("a", str(a.app_log), lines=1)
        follow_b = await c.follow("b", str(b.app_log), lines=1)
        assert await follow_a.read() and await follow_b.read()

        a.stop()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(mid_request.read_all(), 5)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(follow_a.read_all(), 5)
        with pytest.raises(Unreachable, match="connection refused"):
            await c.tail("a", str(a.app_log), 1)

        # b never noticed
        with open(b.app_log, "a") as f:
            f.write("2024-12-17 16:00:00 INFO  [test] still here\n")
        assert b"still here" in await asyncio.wait_for(follow_b.read(), 5)
        assert (await c.tail("b", str(b.app_log), 1)).status.exit == 0

        a.start()
        reply = await _until_ok(lambda: c.tail("a", str(a.app_log), 2))
        assert reply.data.count(b"\n") == 2
        assert c.pool.get("a").connects == 2 and c.pool.get("b").connects == 1
        await follow_b.aclose()


async def _until_ok(call, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except Unreachable:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


async def test_backoff_fails_fast_between_attempts(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, never speaks SSH

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    keygen(tmp_path / "id", "client")
    (tmp_path / "known_hosts").write_text("")
    h = HostConfig(
        name="h",
        address="127.0.0.1",
        port=port,
        key=tmp_path / "id",
        known_hosts=tmp_path / "known_hosts",
        connect_timeout=0.5,
    )
    # The backoff (30 s) is far longer than a loaded machine can stall between the two
    # calls, so the second call always falls inside it. Its message comes only from the
    # refusal before any connection is tried; its time bound is generous (a loaded
    # machine) but far under the backoff, so it was refused at once, not made to wait.
    try:
        async with Client([h], options=PoolOptions(backoff_min=30.0, backoff_max=60.0)) as c:
            t0 = time.monotonic()
            with pytest.raises(Unreachable, match=r"no SSH connection .* within 0.5 s"):
                await c.tail("h", "/var/log/x.log", 1)
            assert 0.4 < time.monotonic() - t0 < 10  # the silent server would hold it forever
            t0 = time.monotonic()
            with pytest.raises(Unreachable, match=r"next attempt in \d+\.\d s") as refused:
                await c.tail("h", "/var/log/x.log", 1)
            assert time.monotonic() - t0 < 10
            wait = re.search(r"next attempt in (\d+\.\d) s", str(refused.value))
            assert wait is not None and 0 < float(wait[1]) <= 30.0
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_changed_host_key_is_refused_and_nothing_is_read(make_worker: MakeWorker) -> None:
    w = make_worker(name="mitm")
    async with Client([host_for(w)], options=FAST) as c:
        assert (await c.tail("w", str(w.app_log), 1)).status.exit == 0
        fingerprint = c.pool.get("w").fingerprint
        requests, accepted = len(records(w, "request")), _accepted(w)
        w.regenerate_host_key()  # restarts sshd with a new key: a man in the middle
        with pytest.raises(HostKeyChanged, match="HOST KEY CHANGED") as exc:
            await c.tail("w", str(w.app_log), 1)
        assert "hosts trust w" in str(exc.value)
        assert c.pool.get("w").fingerprint == fingerprint  # never connected to the new one
    assert _accepted(w) == accepted  # the client key was never offered to it
    assert len(records(w, "request")) == requests


async def test_unknown_host_key(make_worker: MakeWorker, tmp_path: Path) -> None:
    w = make_worker(name="unknown")
    empty = tmp_path / "known_hosts"
    empty.write_text("# nothing yet\n")
    async with Client([host_for(w, known_hosts=empty)], options=FAST) as c:
        with pytest.raises(HostKeyUnknown, match=r"is not in .*known_hosts; check it"):
            await c.tail("w", str(w.app_log), 1)
    async with Client([host_for(w, known_hosts=tmp_path / "missing")], options=FAST) as c:
        with pytest.raises(HostKeyUnknown, match="not found; run `logtorukun hosts trust w`"):
            await c.tail("w", str(w.app_log), 1)
    assert _accepted(w) == 0


def _sign_host_key(ca: Path, host_key: Path) -> Path:
    pub = host_key.with_name(host_key.name + ".pub")
    subprocess.run(
        [SSH_KEYGEN, "-q", "-s", str(ca), "-I", "test-host", "-h", "-n", "127.0.0.1", str(pub)],
        check=True,
        capture_output=True,
    )
    return host_key.with_name(host_key.name + "-cert.pub")


async def test_cert_authority_in_known_hosts(make_worker: MakeWorker, tmp_path: Path) -> None:
    ca, other = tmp_path / "ca", tmp_path / "other-ca"
    keygen(ca, "test-ca")
    keygen(other, "other-ca")
    w = make_worker(name="cert", start=False)
    cert = _sign_host_key(ca, w.host_key)
    w.sshd_options.append(f"HostCertificate {cert}")
    w.start()
    ca_pub = ca.with_name("ca.pub").read_text().strip()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"@cert-authority [127.0.0.1]:{w.port} {ca_pub}\n")
    async with Client([host_for(w, known_hosts=kh)], options=FAST) as c:
        assert (await c.tail("w", str(w.app_log), 1)).status.exit == 0
    # A certificate from another CA is not trusted: never connects.
    w.stop()
    _sign_host_key(other, w.host_key)
    w.start()
    accepted = _accepted(w)
    async with Client([host_for(w, known_hosts=kh)], options=FAST) as c:
        with pytest.raises(HostKeyChanged):
            await c.tail("w", str(w.app_log), 1)
    assert _accepted(w) == accepted


async def test_wrong_client_key_is_auth_refused(make_worker: MakeWorker, tmp_path: Path) -> None:
    w = make_worker(name="auth")
    stranger = tmp_path / "id_ed25519"
    keygen(stranger, "stranger")
    async with Client([host_for(w, key=stranger)], options=FAST) as c:
        with pytest.raises(AuthRefused, match="authentication refused for logtorukun-t@"):
            await c.tail("w", str(w.app_log), 1)
    bad = tmp_path / "not-a-key"
    bad.write_text("hello\n")
    async with Client([host_for(w, key=bad)], options=FAST) as c:
        with pytest.raises(KeyFileError, match="cannot use client key"):
            await c.tail("w", str(w.app_log), 1)


async def test_keepalive_notices_a_silent_worker(make_worker: MakeWorker) -> None:
    w = make_worker(name="frozen")
    options = PoolOptions(keepalive_interval=0.2, keepalive_count_max=2, backoff_min=0.05)
    async with Client([host_for(w, connect_timeout=1.0)], options=options) as c:
        stream = await c.follow("w", str(w.app_log), lines=1)
        assert await stream.read()
        frozen = descendants(w.pid or 0)  # the connection's sshd and the gate, not the listener
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(stream.read_all(), 5)
            assert time.monotonic() - t0 < 3
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        reply = await _until_ok(lambda: c.tail("w", str(w.app_log), 1))
        assert reply.status.exit == 0
        await eventually(lambda: c.pool.get("w").connects == 2)
