"""Fixtures of the fleet tests, client and web side (registered in tests/conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A port that accepts TCP and never says a word (a hung sshd); close it to release."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s
    finally:
        s.close()
