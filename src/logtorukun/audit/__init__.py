"""The web side's audit trail: who saw what, when, from where. See `store.py`."""

from __future__ import annotations

from .errors import AuditError, AuditWriteError
from .normalise import EVENTS
from .records import GENESIS_HASH, AuditContext, AuditFields, AuditRecord, AuditRef
from .sinks import AuditSink, JsonlSink, SyslogSink, sinks_from_settings
from .store import AuditStore
from .times import parse_time
from .verify import VerifyProblem, VerifyReport

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
