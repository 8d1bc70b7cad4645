"""What a finished read gives back: its output and status (`Reply`), or for `sources`
the files, units and containers a worker's policy lets us read (`SourceList`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..gate.vocabulary import Exit
from .errors import LimitHit, ProtocolError
from .stream import Status


@dataclass(frozen=True)
class Reply:
    """A finished request: all its output and how it ended."""

    host: str
    command: str
    data: bytes
    status: Status

    @property
    def text(self) -> str:
        """The output as text; bytes that are not UTF-8 become U+FFFD."""
        return self.data.decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        """A limit cut the output short; `status.reason` says which."""
        return self.status.truncated or self.status.exit == Exit.LIMIT

    def limit_error(self) -> LimitHit | None:
        """The truncation as an error, for callers that must not show partial data."""
        if not self.truncated:
            return None
        return LimitHit(self.host, Exit.LIMIT, self.status.reason or "output truncated", self.data)


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    mtime: int
    compressed: bool = False


@dataclass(frozen=True)
class SourceList:
    """What this worker's policy lets us read."""

    host: str
    gate: str
    files: tuple[SourceFile, ...]
    units: tuple[str, ...]
    containers: tuple[str, ...]
    limits: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: Reply) -> SourceList:
        """The gate's `sources` answer; ProtocolError if it is not the expected JSON."""
        try:
            doc = json.loads(reply.data)
            files = tuple(
                SourceFile(
                    str(f["path"]),
                    int(f["size"]),
                    int(f["mtime"]),
                    bool(f.get("compressed", False)),
                )
                for f in doc.get("files", [])
            )
            return cls(
                host=reply.host,
                gate=str(doc.get("gate", "")),
                files=files,
                units=tuple(str(u) for u in doc.get("units", [])),
                containers=tuple(str(c) for c in doc.get("containers", [])),
                limits=dict(doc.get("limits", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(
                reply.host, f"sources: the gate's answer is not the expected JSON ({exc})"
            ) from None
