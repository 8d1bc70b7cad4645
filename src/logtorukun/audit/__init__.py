"""The web side's audit trail: who saw what, when, from where. See `store.py`."""

from __future__ import annotations

from .sinks import AuditSink, JsonlSink, SyslogSink, sinks_from_settings
from .store import (
    EVENTS,
    GENESIS_HASH,
    AuditContext,
    AuditError,
    AuditFields,
    AuditRecord,
    AuditRef,
    AuditStore,
    AuditWriteError,
    VerifyProblem,
    VerifyReport,
    parse_time,
)

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "AuditContext",
    "AuditError",
    "AuditFields",
    "AuditRecord",
    "AuditRef",
    "AuditSink",
    "AuditStore",
    "AuditWriteError",
    "JsonlSink",
    "SyslogSink",
    "VerifyProblem",
    "VerifyReport",
    "parse_time",
    "sinks_from_settings",
]
