"""The SSH client side: config hosts, an asyncssh pool, the bridge, a typed async API.

The web server imports `Client` and the errors; the CLI (`commands`) uses the same API.
Of the gate, only `logtorukun.gate.protocol` is imported here.
"""

from .errors import (
    AuthRefused,
    Busy,
    ClientError,
    ConnectionLost,
    GateExitError,
    GateRefused,
    HostKeyChanged,
    HostKeyUnknown,
    InvalidArgument,
    LimitHit,
    NotFound,
    ProtocolError,
    RequestTimeout,
    UnknownHost,
    Unreachable,
)
from .pool import Pool, PoolOptions
from .reads import Client
from .replies import Reply, SourceFile, SourceList
from .stream import Position, Status, Stream

__all__ = [
    "AuthRefused",
    "Busy",
    "Client",
    "ClientError",
    "ConnectionLost",
    "GateExitError",
    "GateRefused",
    "HostKeyChanged",
    "HostKeyUnknown",
    "InvalidArgument",
    "LimitHit",
    "NotFound",
    "Pool",
    "PoolOptions",
    "Position",
    "ProtocolError",
    "Reply",
    "RequestTimeout",
    "SourceFile",
    "SourceList",
    "Status",
    "Stream",
    "UnknownHost",
    "Unreachable",
]
