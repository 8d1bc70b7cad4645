"""Sample logs of a made-up web shop, for the demo and the tests.

`write_sample_logs(root)` writes the fixed set the tests read (app.log of 2024-12-17
with known lines in it, app.log.1, app.log.2.gz, and a notes.txt no policy admits);
`log_line(rng, when)` is one more line of the same kind, which the demo's writer
appends while it runs.
"""

from __future__ import annotations

import gzip
import random
from datetime import datetime, timedelta
from pathlib import Path

DAY = "2024-12-17"


def sample_app_log() -> str:
    """A deterministic app.log for 2024-12-17 13:00-15:59, about 800 lines.

    Fixed points tests may rely on: `2024-12-17 14:03:05 ERROR [payments] charge failed
    for order 80412` followed by a Python stack trace (lines without a timestamp); INFO,
    WARN and ERROR lines in every hour; one line of Japanese text (UTF-8).
    """
    rng = random.Random(20241217)
    t = datetime(2024, 12, 17, 13, 0, 0)
    end = datetime(2024, 12, 17, 16, 0, 0)
    lines: list[str] = []
    trace_at = datetime(2024, 12, 17, 14, 3, 5)
    japanese_at = datetime(2024, 12, 17, 14, 30, 0)
    while t < end:
        if t <= trace_at < t + timedelta(seconds=30):
            t = trace_at
            lines += [f"{t:%Y-%m-%d %H:%M:%S} ERROR [payments] charge failed for order 80412"]
            lines += _TRACE
        elif t <= japanese_at < t + timedelta(seconds=30):
            t = japanese_at
            lines.append(f"{t:%Y-%m-%d %H:%M:%S} INFO  [notify] 通知を送信しました user=42 件数=3")
        else:
            lines.append(f"{t:%Y-%m-%d %H:%M:%S} {message(rng)}")
        t += timedelta(seconds=rng.randint(1, 25))
    return "\n".join(lines) + "\n"


_TRACE = [
    "Traceback (most recent call last):",
    '  File "/srv/worker/app/payments.py", line 88, in charge',
    "    resp = client.post(url, json=body, timeout=5)",
    '  File "/srv/worker/app/http.py", line 41, in post',
    "    raise UpstreamTimeout(url)",
    "app.http.UpstreamTimeout: https://payments.internal/v1/charge timed out after 5.0s",
]


def message(rng: random.Random) -> str:
    """One message of the sample app: level (padded to 5), component, text."""
    roll = rng.random()
    order = rng.randint(10000, 99999)
    ms = rng.randint(2, 900)
    if roll < 0.08:
        return rng.choice(
            [
                f"ERROR [payments] charge failed for order {order}: card declined",
                f"ERROR [db] connection reset by peer (pool=main, in use {rng.randint(1, 20)}/20)",
                f"ERROR [api] POST /api/orders/{order} 500 {ms}ms",
            ]
        )
    if roll < 0.22:
        return rng.choice(
            [
                f"WARN  [db] slow query {ms * 7}ms: SELECT * FROM orders WHERE id = {order}",  # noqa: S608 (a log line)
                f"WARN  [payments] retrying upstream payment-gw (attempt {rng.randint(2, 5)}/5)",
                f"WARN  [api] GET /api/orders/{order} 429 rate limited client=10.0.3.{ms % 250}",
            ]
        )
    return rng.choice(
        [
            f"INFO  [api] GET /api/orders/{order} 200 {ms}ms",
            f"INFO  [api] POST /api/orders 201 {ms}ms order={order}",
            f"INFO  [jobs] job {order} done in {ms / 100:.2f}s",
            f"INFO  [cache] refreshed product catalogue ({rng.randint(900, 1100)} items)",
        ]
    )


def older_log(day: str, seed: int, count: int) -> str:
    rng = random.Random(seed)
    t = datetime.strptime(day, "%Y-%m-%d").replace(hour=9)
    out = []
    for _ in range(count):
        out.append(f"{t:%Y-%m-%d %H:%M:%S} {message(rng)}")
        t += timedelta(seconds=rng.randint(30, 300))
    return "\n".join(out) + "\n"


def write_sample_logs(root: Path) -> None:
    """app.log (today), app.log.1 (yesterday), app.log.2.gz (the day before), notes.txt.

    notes.txt matches no policy pattern: a file that exists under the root but is refused.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.log").write_text(sample_app_log(), encoding="utf-8")
    (root / "app.log.1").write_text(older_log("2024-12-16", 16, 200), encoding="utf-8")
    gz = gzip.compress(older_log("2024-12-15", 15, 200).encode(), mtime=0)
    (root / "app.log.2.gz").write_bytes(gz)
    (root / "notes.txt").write_text("not a log: no policy pattern matches this file\n")
    for p in root.iterdir():
        p.chmod(0o644)


def log_line(rng: random.Random, when: datetime) -> str:
    """One line of the sample app's log: timestamp, level, component, message."""
    return f"{when:%Y-%m-%d %H:%M:%S} {message(rng)}"


def history(rng: random.Random, start: datetime, count: int, step: int) -> str:
    """`count` lines from `start`, 1 to `step` seconds apart."""
    t = start
    out = []
    for _ in range(count):
        out.append(log_line(rng, t))
        t += timedelta(seconds=rng.randint(1, step))
    return "\n".join(out) + "\n"
