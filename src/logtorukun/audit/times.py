"""Times in the audit trail: their stored form, and what callers may pass as a bound.

Stored as UTC ISO 8601 with microseconds, so text order is time order and a time range
is an index range.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

TimeArg = datetime | date | str


def format_ts(moment: datetime | date) -> str:
    """Stored form of a time: UTC, microseconds, `+00:00`, so text order is time order."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


_RELATIVE = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: TimeArg, *, now: datetime | None = None) -> str:
    """ISO 8601 (naive means UTC), a date, or an age such as `15m`, `2h`, `7d`."""
    if isinstance(value, datetime | date):
        return format_ts(value)
    text = value.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        delta = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return format_ts((now or datetime.now(UTC)) - delta)
    try:
        return format_ts(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2025-01-31, 2025-01-31T12:00:00Z) "
            "or an age such as 15m, 2h, 7d"
        ) from None
