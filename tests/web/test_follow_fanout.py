"""Hostile viewers of a shared follow: one that stops reading must not slow the others
nor make the server hold its lines; what it missed is counted, never silently lost."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from logtorukun.web import fanout
from tests.support.sshd import Worker
from tests.web.support import LiveServer
from tests.web.test_api import SSE, _append


class RawViewer:
    """A follow on a bare socket with a tiny receive buffer: it reads the `ready` event,
    then reads nothing until told to (a browser tab that froze)."""

    def __init__(self, live: LiveServer, user: str, path: Path) -> None:
        cookies = live.client(user).cookies
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        host, port = urllib.parse.urlsplit(live.url).netloc.split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        query = urllib.parse.urlencode({"path": str(path)})
        self.sock.sendall(
            f"GET /api/hosts/web1/follow?{query} HTTP/1.1\r\nHost: {host}\r\n"
            f"Cookie: {cookie}\r\n\r\n".encode()
        )
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        self.text = ""
        self.events: list[tuple[str, Any]] = []
        while not self.events:
            self._chunk()

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            got = self.sock.recv(65536)
            assert got, "the server closed the stream"
            self.buf += got
        out, _, self.buf = self.buf.partition(sep)
        return out

    def _chunk(self) -> None:
        """Read one HTTP chunk and parse the SSE events it completes."""
        size = int(self._until(b"\r\n"), 16)
        while len(self.buf) < size + 2:
            got = self.sock.recv(65536)
            assert got, "the server closed the stream"
            self.buf += got
        self.text += self.buf[:size].decode()
        self.buf = self.buf[size + 2 :]
        *done, self.text = self.text.split("\n\n")
        for block in done:
            fields = dict(ln.split(": ", 1) for ln in block.splitlines() if ": " in ln)
            if "event" in fields:
                self.events.append((fields["event"], json.loads(fields["data"])))

    def read_until(self, text: str) -> None:
        while not any(text in ln for ln in self.lines()):
            self._chunk()

    def lines(self) -> list[str]:
        return [ln for name, d in self.events if name == "lines" for ln in d["lines"]]

    def dropped(self) -> int:
        return sum(int(d["dropped"]) for name, d in self.events if name == "lines")


def test_a_viewer_that_stops_reading_neither_slows_the_others_nor_grows_the_server(
    live: LiveServer, web_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small ring and small events, so that a flood within the gate's per-follow limits
    # (10,000 lines, 10 MB) is many times what the server may hold for one viewer.
    monkeypatch.setattr(fanout, "BACKLOG", 200)
    monkeypatch.setattr(fanout, "MAX_BATCH", 100)
    path = web_worker.root / "follow.log"
    hub = live.server.hub
    stuck = RawViewer(live, "olivia", path)
    fast = SSE(live.client("olivia"), "/api/hosts/web1/follow", {"path": str(path)})
    try:
        assert fast.status == 200
        up = next(iter(hub.upstreams.values()))
        assert len(up.viewers) == 2
        # Both have had `ready`: a line written now reaches both.
        probe = f"fanout probe {time.time()}"
        _append(path, f"2024-12-17 14:00:03 DEBUG {probe}\n")
        fast.wait_for(probe)
        stuck.read_until(probe)
        # From here on `stuck` reads nothing. 8 MB, twice what the kernel buffers for it
        # (4 MiB at most on the server's side of a socket, by default on Linux), in
        # steps of 100 lines: the next step only once `fast` has the last one.
        count, step = 8000, 100
        pad = "x" * 980
        for k in range(0, count, step):
            lines = [f"2024-12-17 14:00:04 INFO flood {i:05d} {pad}" for i in range(k, k + step)]
            _append(path, "\n".join(lines) + "\n")
            fast.wait_for(f"flood {k + step - 1:05d} ", timeout=60)
        marker = f"after the flood {time.time()}"
        _append(path, f"2024-12-17 14:00:05 INFO {marker}\n")
        fast.wait_for(marker, timeout=60)
        # The reading viewer got everything while the other still reads nothing.
        assert not any(d["dropped"] for n, d in fast.events if n == "lines")
        behind = [v for v in up.viewers if v.cursor < up.out.end or v.inflight]
        assert len(behind) == 1, "only the stuck viewer is behind"
        # The server holds the ring (a fixed number of lines) and, for the stuck viewer,
        # at most the one event in flight: what it missed is counted, not kept.
        assert up.out.end - up.out.base <= fanout.BACKLOG
        # Now it reads again: every line is either delivered or reported as dropped,
        # and most were dropped, not buffered for it.
        stuck.read_until(marker)
        assert len(stuck.lines()) + stuck.dropped() == len(fast.lines())
        assert stuck.dropped() > count // 4
    finally:
        stuck.sock.close()
        fast.close()
