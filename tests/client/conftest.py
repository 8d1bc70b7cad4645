"""Client fixtures: HostConfig for real sshd workers, a Client per test, a worker we may change.

`mine` is a module-scoped worker of these tests (files added, symlinks swapped, logs
rotated), so the shared `worker` stays as the other suites expect it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from logtorukun.client import Client, PoolOptions
from logtorukun.config import HostConfig
from tests.support.sshd import Worker

FAST = PoolOptions(backoff_min=0.05, backoff_max=0.2, keepalive_interval=5)


def host_for(w: Worker, name: str = "w", **kw: Any) -> HostConfig:
    """The server-config entry for worker `w`, as `[[host]]` in server.toml would give it."""
    values: dict[str, Any] = {
        "name": name,
        "address": w.host,
        "port": w.port,
        "user": w.user,
        "key": w.client_key,
        "known_hosts": w.known_hosts,
        "connect_timeout": 5.0,
        "request_timeout": 20.0,
    }
    values.update(kw)
    return HostConfig(**values)


def write_config(path: Path, hosts: list[HostConfig]) -> Path:
    """A server.toml with these hosts (what the CLI reads)."""
    out = []
    for h in hosts:
        labels = ", ".join(f'"{x}"' for x in h.labels)
        out.append(
            f'[[host]]\nname = "{h.name}"\naddress = "{h.address}"\nport = {h.port}\n'
            f'user = "{h.user}"\nkey = "{h.key}"\nknown_hosts = "{h.known_hosts}"\n'
            f"labels = [{labels}]\nconnect_timeout = {h.connect_timeout}\n"
            f"request_timeout = {h.request_timeout}\n"
        )
    path.write_text("\n".join(out))
    return path


@pytest.fixture
async def client(worker: Worker) -> AsyncIterator[Client]:
    """A bridge client to the shared worker, host name "w"."""
    async with Client([host_for(worker)], options=FAST) as c:
        yield c


@pytest.fixture
async def oneshot(worker: Worker) -> AsyncIterator[Client]:
    """The same in one-shot form: a channel and a gate process per request."""
    async with Client([host_for(worker)], oneshot=True, options=FAST) as c:
        yield c


@pytest.fixture(scope="module")
def mine() -> Iterator[Worker]:
    w = Worker(name="client-mine")
    try:
        w.start()
        yield w
    finally:
        w.destroy()
