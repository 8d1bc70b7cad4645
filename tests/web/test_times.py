"""Since/until as typed: relative forms resolved in UTC, per source kind; errors name the field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from logtorukun.times import BadTime, for_source
from tests.support.sshd import Worker
from tests.web.support import LiveServer

NOW = datetime(2024, 12, 17, 14, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "kind", "want"),
    [
        ("15m", "file", "2024-12-17 14:15:05"),
        ("2h", "file", "2024-12-17 12:30:05"),
        ("90 min ago", "file", "2024-12-17 13:00:05"),
        ("-1d", "file", "2024-12-16 14:30:05"),
        ("1w", "file", "2024-12-10 14:30:05"),
        ("today", "file", "2024-12-17 00:00:00"),
        ("Yesterday", "file", "2024-12-16 00:00:00"),
        ("now", "file", "2024-12-17 14:30:05"),
        ("2024-12-17T14:00", "file", "2024-12-17 14:00"),
        ("2024-12-17 14", "file", "2024-12-17 14"),
        ("15m", "unit", "-15min"),
        ("2h", "unit", "-2h"),
        ("2w", "unit", "-14d"),
        ("today", "unit", "today"),
        ("2024-12-17 14:00", "unit", "2024-12-17 14:00"),
        ("15m", "container", "2024-12-17T14:15:05Z"),
        ("yesterday", "container", "2024-12-16T00:00:00Z"),
    ],
)
def test_relative_and_absolute_forms(text: str, kind: str, want: str) -> None:
    assert for_source("since", text, kind, NOW) == want


@pytest.mark.parametrize("text", ["1h30", "tomorrow", "15 parsecs", "2024/12/17", "17-12-2024"])
def test_nonsense_names_the_field(text: str) -> None:
    with pytest.raises(BadTime, match=r"^until: .* is not a time; use 15m, 2h"):
        for_source("until", text, "file", NOW)


def test_the_api_takes_relative_times_and_names_the_field(
    live: LiveServer, web_worker: Worker
) -> None:
    path: Path = web_worker.root / "recent.log"
    now = datetime.now(UTC)
    old = "2000-01-01 00:00:00 INFO long ago\n"
    fresh = f"{now:%Y-%m-%d %H:%M:%S} INFO just now\n"
    path.write_text(old + fresh)
    path.chmod(0o644)
    c = live.client("olivia")
    try:
        r = c.get("/api/hosts/web1/tail", params={"path": str(path), "since": "15m"})
        assert r.status_code == 200 and r.json()["lines"] == [fresh.rstrip("\n")]
        r = c.get("/api/hosts/web1/tail", params={"path": str(path), "until": "yesterday"})
        assert r.status_code == 200 and r.json()["lines"] == [old.rstrip("\n")]
        r = c.get("/api/hosts/web1/tail", params={"path": str(path), "since": "tomorrow"})
        assert r.status_code == 422 and r.json()["reason"].startswith("since: 'tomorrow'")
    finally:
        path.unlink()
