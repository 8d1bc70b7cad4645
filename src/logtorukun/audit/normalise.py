"""Caller input to column values: validated, bounded and made JSON-safe outside the write
lock, so a bad field is the caller's error and never a half-written record.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from .records import COLUMNS

# The events the server writes; others are accepted (lowercase identifiers) so a new
# feature does not need a schema change.
EVENTS = frozenset(
    {
        "login",
        "login_failed",
        "logout",
        "token_used",
        "read",
        "read_end",
        "follow_start",
        "follow_end",
        "audit_view",
        "export",
        "refused",
        "auth_failures",
    }
)
# Longer strings are cut: a hostile User-Agent or pattern must not bloat every record.
MAX_TEXT = 4096

_EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TEXT_FIELDS = ("user", "client", "user_agent", "action", "host", "source", "reason")
_FIELD_NAMES = frozenset(COLUMNS) - {"seq", "ts", "event", "prev_hash", "hash"}


def _clean(text: str) -> str:
    """Bounded, valid UTF-8 (a lone surrogate would make SQLite and the hash fail)."""
    if len(text) > MAX_TEXT:
        text = f"{text[:MAX_TEXT]}...(+{len(text) - MAX_TEXT} chars)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _json_value(value: Any) -> Any:
    """Turn caller data into plain JSON values that survive a store/load round trip."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_clean(str(k)): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_json_value(v) for v in items]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _clean(str(value))


def normalise(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate caller input outside the write lock; returns column values (JSON as text)."""
    if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
        raise ValueError(f"audit event {event!r}: use a lowercase identifier such as 'read'")
    unknown = set(fields) - _FIELD_NAMES
    if unknown:
        raise TypeError(f"unknown audit field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"event": event}
    for name in _TEXT_FIELDS:
        if name in fields:
            v = fields[name]
            if v is not None and not isinstance(v, str):
                raise TypeError(f"audit field {name} must be str or None, not {type(v).__name__}")
            out[name] = None if v is None else _clean(v)
    if "roles" in fields:
        roles = fields["roles"]
        if isinstance(roles, str) or not all(isinstance(r, str) for r in roles):
            raise TypeError("audit field roles must be a sequence of str")
        out["roles"] = [_clean(r) for r in roles]
    for name in ("params", "outcome"):
        if name in fields:
            v = fields[name]
            if v is None and name == "outcome":
                out[name] = None
            elif isinstance(v, Mapping):
                out[name] = _json_value(v)
            else:
                raise TypeError(f"audit field {name} must be a mapping")
    if "decision" in fields and fields["decision"] not in (None, "allow", "deny"):
        raise ValueError(f"audit decision must be 'allow', 'deny' or None: {fields['decision']!r}")
    if "decision" in fields:
        out["decision"] = fields["decision"]
    if "ref" in fields:
        ref = fields["ref"]
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 1):
            raise TypeError("audit field ref must be a positive int (a seq) or None")
        out["ref"] = ref
    return out
