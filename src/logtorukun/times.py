"""Since/until as people type them: `15m`, `2h`, `7d`, `today`, `yesterday`, `now`, or
an absolute time, turned into what each kind of source understands.

Relative times are resolved on the web server, in UTC (the viewer shows log times as
UTC unless switched to local time; a timestamp without a zone is taken as UTC). Files
get an absolute `YYYY-MM-DD HH:MM:SS` for the gate's `range`; journal units get
journalctl's own forms (`-15m`, `today`); containers get docker's (`15m`, or an
RFC 3339 time for `today`). Every error names the field it is about.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_REL = re.compile(
    r"-?([0-9]{1,6}) ?(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?|w|weeks?)"
    r"(?: ago)?"
)
_ABS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[ T][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?)?"
)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EXAMPLES = "15m, 2h, 7d, today, yesterday, now or 2024-12-17 14:00"


class BadTime(ValueError):
    """A since/until the user typed that means nothing; the message names the field."""


def _relative(text: str) -> timedelta | None:
    m = _REL.fullmatch(text)
    if m is None:
        return None
    unit = m.group(2)
    key = "m" if unit.startswith("mi") or unit == "m" else unit[0]
    return timedelta(seconds=int(m.group(1)) * _SECONDS[key])


def _instant(field: str, text: str, now: datetime) -> datetime | None:
    """The UTC instant a relative form names; None for an absolute time (kept as typed)."""
    word = text.strip().lower()
    if word == "now":
        return now
    if word == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "yesterday":
        return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    delta = _relative(word)
    if delta is not None:
        return now - delta
    if _ABS.fullmatch(text.strip()):
        return None
    raise BadTime(f"{field}: {text!r} is not a time; use {EXAMPLES}")


def for_source(field: str, text: str, kind: str, now: datetime | None = None) -> str:
    """`text` (since or until, as typed) in the form the source `kind` takes."""
    now = now or datetime.now(UTC)
    text = text.strip()
    at = _instant(field, text, now)
    if at is None:
        if kind == "file":
            return text.replace("T", " ")
        return text
    word = text.lower()
    if kind == "unit":
        if word in ("now", "today", "yesterday"):
            return word
        secs = int((now - at).total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            if secs % size == 0:
                return f"-{secs // size}{unit}"
        return f"-{secs}s"  # pragma: no cover - size 1 always divides
    if kind == "container":
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return at.strftime("%Y-%m-%d %H:%M:%S")
