"""The generated log every benchmark reads: written once, cached in bench/data/."""

from __future__ import annotations

import time
from pathlib import Path

LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")


def make_log(path: Path, size: int, *, rare: str | None = None, every: int = 2_000_003) -> None:
    """~100-byte lines with increasing timestamps; `rare` replaces the tail of every
    `every`-th line, so a search for it has a few matches in a large file."""
    if path.exists() and path.stat().st_size >= size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    t0 = 1734393600  # 2024-12-17 00:00:00 UTC
    n = 0
    written = 0
    with open(tmp, "wb") as f:
        while written < size:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0 + n // 4000 * 60))
            lines = [
                f"{stamp}:{(i % 60):02d} {LEVELS[i % 6]:<5} worker[{i % 16}] request {n + i}"
                + (
                    f" done {rare}\n"
                    if rare and (n + i) % every == 0
                    else f" done user={i % 977} took={i % 503}ms"
                    f" path=/api/orders/{i * 7919 % 99991}\n"
                )
                for i in range(4000)
            ]
            n += 4000
            block = "".join(lines).encode()
            f.write(block)
            written += len(block)
    tmp.chmod(0o644)  # the benchmarks' workers read it as an unprivileged user
    tmp.rename(path)
