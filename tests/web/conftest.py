from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import Worker
from tests.web.support import LiveServer, running, write_config


@pytest.fixture(scope="session")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="session")
def live(worker: Worker, web_dir: Path) -> Iterator[LiveServer]:
    """One server for the session, on the shared worker."""
    with running(write_config(web_dir, worker)) as server:
        yield server
