"""Client fixtures: HostConfig for real sshd workers, a Client per test, a worker we may change.

`mine` is a module-scoped worker of these tests (files added, symlinks swapped, logs
rotated), so the shared `worker` stays as the other suites expect it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from logtorukun.client import Client
from tests.client.helpers import FAST, host_for
from tests.support.sshd import Worker


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
