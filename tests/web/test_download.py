"""The streamed download route against a real `logtorukun serve` and a real sshd worker.

A 128 MiB log (well over the 48 MiB the server may grow by) is downloaded by a client
that reads slowly at first: the bytes arrive exactly, and the server's resident memory
stays within a few MiB of where it started (back-pressure reaches the worker instead
of a buffer growing in the server). A refusal is an HTTP status before any byte, and
every download is audited.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

from logtorukun.audit import AuditStore
from tests.conftest import MakeWorker
from tests.web.support import served

SIZE_MIB = 128


class PeakOf:
    """Largest resident size of one process, sampled every few milliseconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bytes = max(self.bytes, self.sample())
            self._stop.wait(0.005)

    def __enter__(self) -> PeakOf:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _log(path: Path) -> bytes:
    block = b"".join(
        b"2024-12-17 14:00:%02d INFO  [dl] line %06d\n" % (i % 60, i) for i in range(25_000)
    )
    with path.open("wb") as f:
        for _ in range((SIZE_MIB << 20) // len(block) + 1):
            f.write(block)
    path.chmod(0o644)
    return block


def test_a_large_download_streams_in_constant_memory(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    w = make_worker(name="dl")
    w.write_policy(w.default_policy(max_lines=10**9, max_bytes=10**11, max_seconds=600))
    big = w.root / "big.log"
    block = _log(big)
    size = big.stat().st_size
    with served(tmp_path, w) as srv, srv.client("olivia") as c:
        assert c.get("/api/hosts/web1/tail", params={"path": str(w.app_log)}).status_code == 200
        with (
            PeakOf(srv.proc.pid) as peak,
            c.stream("GET", "/api/hosts/web1/download", params={"path": str(big)}) as r,
        ):
            start = peak.sample()
            assert r.status_code == 200
            assert r.headers["content-disposition"] == 'attachment; filename="web1_big.log"'
            got = 0
            first = b""
            for i, chunk in enumerate(r.iter_raw(1 << 16)):
                if i < 50:
                    time.sleep(0.02)  # a slow reader first: the server must not buffer ahead
                    first += chunk
                got += len(chunk)
        assert got == size
        assert first == (block * (len(first) // len(block) + 1))[: len(first)]
        grown = peak.bytes - start
        assert grown < 48 << 20, f"the server grew by {grown >> 20} MiB for a {SIZE_MIB} MiB file"
    store = AuditStore(tmp_path / "logtorukun.db", readonly=True)
    try:
        ends = store.query(event="read_end", user="olivia", limit=10)
        dl = [e for e in ends if e.outcome is not None and e.outcome.get("download")]
        assert dl and dl[0].outcome is not None
        assert dl[0].outcome["bytes"] == size and dl[0].outcome["exit"] == 0, dl[0].outcome
    finally:
        store.close()


def test_a_refused_download_is_a_status_before_any_byte(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    w = make_worker(name="dl-refused")
    with served(tmp_path, w) as srv:
        with srv.client("olivia") as c:
            r = c.get("/api/hosts/web1/download", params={"path": str(w.root / "missing.log")})
            assert r.status_code == 404, r.text
            assert "no such file" in r.json()["reason"]
        with srv.client("rita") as c:  # may tail app.log, not download it
            r = c.get("/api/hosts/web1/download", params={"path": str(w.app_log)})
            assert r.status_code == 403
