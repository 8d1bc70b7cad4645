"""What an audit record is and how it is hashed: the one definition that the store, the
verifier, the exports and the sinks share.

Every record carries `prev_hash` and `hash = sha256(prev_hash + canonical JSON of every
other field, seq included)`; seq 1 chains from `GENESIS_HASH`. A JSON-lines record
(export or sink) can be checked without this code:

    rec = json.loads(line); h = rec.pop("hash"); p = rec.pop("prev_hash")
    body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256((p + body).encode()).hexdigest() == h
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

GENESIS_HASH = "0" * 64

Decision = Literal["allow", "deny"]

# Column order in the table, in records and in CSV.
COLUMNS = (
    "seq",
    "ts",
    "event",
    "user",
    "roles",
    "client",
    "user_agent",
    "action",
    "host",
    "source",
    "params",
    "decision",
    "reason",
    "ref",
    "outcome",
    "prev_hash",
    "hash",
)


class AuditContext(TypedDict, total=False):
    """Who asked for what; an end record inherits the unset ones from its start."""

    user: str | None
    roles: Sequence[str]
    client: str | None
    user_agent: str | None
    action: str | None
    host: str | None
    source: str | None
    params: Mapping[str, Any]
    decision: Decision | None
    reason: str | None


class AuditFields(AuditContext, total=False):
    ref: int | None
    outcome: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditRef:
    """A position in the chain; `str()` is the `SEQ:HASH` anchor a SIEM or an auditor keeps."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditRef:
        m = re.fullmatch(r"([1-9][0-9]{0,18}):([0-9a-fA-F]{64})", text.strip())
        if not m:
            raise ValueError(f"{text!r} is not SEQ:HASH (e.g. 42:<64 hex digits>)")
        return cls(int(m.group(1)), m.group(2).lower())


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: str
    event: str
    user: str | None = None
    roles: tuple[str, ...] = ()
    client: str | None = None
    user_agent: str | None = None
    action: str | None = None
    host: str | None = None
    source: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    reason: str | None = None
    ref: int | None = None
    outcome: dict[str, Any] | None = None
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def content(self) -> dict[str, Any]:
        """The hashed fields, as JSON values."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "user": self.user,
            "roles": list(self.roles),
            "client": self.client,
            "user_agent": self.user_agent,
            "action": self.action,
            "host": self.host,
            "source": self.source,
            "params": self.params,
            "decision": self.decision,
            "reason": self.reason,
            "ref": self.ref,
            "outcome": self.outcome,
        }

    def as_dict(self) -> dict[str, Any]:
        d = self.content()
        d["prev_hash"] = self.prev_hash
        d["hash"] = self.hash
        return d

    def to_json(self) -> str:
        """One JSON line: what exports and sinks write, verifiable on its own.

        Canonical JSON except that NEL, U+2028 and U+2029 are escaped: `str.splitlines`
        and some log shippers break lines there.
        """
        return canonical_json(self.as_dict()).translate(_LINE_BREAKS)

    def as_ref(self) -> AuditRef:
        return AuditRef(self.seq, self.hash)


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()
