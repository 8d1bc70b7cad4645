"""Fixtures shared by the gate's reader tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


class PreadCounter:
    """How many bytes the code under test read with os.pread (its only way to read)."""

    def __init__(self) -> None:
        self.total = 0


@pytest.fixture
def pread_bytes(monkeypatch: pytest.MonkeyPatch) -> Iterator[PreadCounter]:
    counter = PreadCounter()
    real = os.pread

    def counting(fd: int, length: int, offset: int) -> bytes:
        data = real(fd, length, offset)
        counter.total += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting)
    yield counter
