"""The gate's own audit trail: one JSON line per request event, on the worker.

A request that is allowed gets a `request` record *before* any byte of log data is
sent and an `end` record with the outcome; a refusal gets one `request` record with
decision `deny`. If the record cannot be written the request is refused (fail closed),
which is why syslog is spoken directly over its socket: Python's `syslog` module drops
messages silently when no daemon listens.
"""

from __future__ import annotations

import os
import time
from _thread import allocate_lock  # threading's Lock, without threading's imports

from .errors import Exit, GateError
from .jsonline import encode as _json  # json.dumps(ensure_ascii=True), without json
from .policy import AuditSettings

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    import socket
    from typing import Any

# authpriv (10) * 8 + info (6): readable by root only on a stock syslog setup.
_PRI = 10 * 8 + 6

# A record is at most this many bytes of JSON (a syslog datagram adds a ~50-byte
# prefix and stays within 4 KiB). What a client sends cannot make it larger.
MAX_RECORD = 4000
_FIRST = ("event", "decision", "target", "exit", "reason")  # survive any cut of the rest
_MAX_VIA = 512  # bytes of `via` (the web server's account of the user) kept
_MAX_FIELD = 512  # bytes of any other client-influenced string kept when cutting


def bounded_line(record: dict[str, Any]) -> str:
    """The record as one JSON line of at most MAX_RECORD bytes.

    `event`, `decision`, `target`, `exit` and `reason` come first, so a syslog daemon
    that truncates still keeps them. The command is cut at the grammar's maximum with
    its original length in `command_length`; `via` is capped (kept as a cut JSON string
    in `via_cut` when too big); other strings are cut if the line is still too long.
    """
    from .vocabulary import MAX_COMMAND

    rec = {k: record[k] for k in _FIRST if k in record}
    rec.update((k, v) for k, v in record.items() if k not in rec)
    command = rec.get("command")
    if isinstance(command, str) and len(command) > MAX_COMMAND:
        rec["command"] = command[:MAX_COMMAND]
        rec["command_length"] = len(command)
    line = _json(rec)
    if len(line) <= MAX_RECORD:
        return line
    if "via" in rec:
        via = _json({"v": rec["via"]})[5:-1]
        if len(via) > _MAX_VIA:
            del rec["via"]
            rec["via_cut"] = via[:_MAX_VIA]
    for key, value in list(rec.items()):
        if key != "command" and isinstance(value, str) and len(value) > _MAX_FIELD:
            rec[key] = value[:_MAX_FIELD]
            rec["cut"] = True
    line = _json(rec)
    if len(line) > MAX_RECORD and isinstance(rec.get("command"), str):
        rec.setdefault("command_length", len(command or ""))
        line = _json(rec)
        text = rec["command"]
        room = MAX_RECORD - (len(line) - len(_json({"c": text})) + 6)
        lo, hi = 0, len(text)  # the longest prefix whose JSON (escapes and all) fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(_json({"c": text[:mid]})) - 6 <= room else (lo, mid - 1)
        rec["command"] = text[:lo]
        line = _json(rec)
    if len(line) > MAX_RECORD:  # identity fields too big: keep only what identifies it
        line = _json({k: rec[k] for k in (*_FIRST, "ts", "id", "cut") if k in rec})
    return line


def identity_from_env(env: dict[str, str]) -> dict[str, Any]:
    """Who connected: client address and the key or certificate sshd accepted."""
    ident: dict[str, Any] = {}
    client = env.get("SSH_CLIENT", "").split()
    if client:
        ident["client"] = client[0]
        if len(client) > 1:
            ident["client_port"] = client[1]
    auth_file = env.get("SSH_USER_AUTH")  # sshd's ExposeAuthInfo yes
    if auth_file:
        try:
            # Bytes, decoded here: a text-mode open() would import the ascii codec.
            with open(auth_file, "rb") as f:
                first = f.readline(1 << 16).decode("ascii", "replace").split()
        except OSError:
            first = []
        if len(first) >= 3 and first[0] == "publickey":
            ident["key_type"] = first[1]
            ident.update(_describe_key(first[1], first[2]))
    return ident


def _describe_key(key_type: str, b64: str) -> dict[str, Any]:
    import binascii  # built in; `base64` would import `re` and `struct`

    try:
        blob = binascii.a2b_base64(b64, strict_mode=True)
    except ValueError:
        return {}
    out: dict[str, Any] = {"key": _fingerprint(blob)}
    if "-cert-v01@openssh.com" in key_type:
        out.update(_cert_fields(key_type, blob))
    return out


def _fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -l` and sshd's log print it."""
    import binascii

    digest = _sha256(blob)
    return "SHA256:" + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")


def _sha256(data: bytes) -> bytes:
    """SHA-256 from CPython's built-in module when there is one: `hashlib` loads
    OpenSSL, several milliseconds of every start of a gate behind ExposeAuthInfo."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found, unused-ignore]  # 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment, unused-ignore]
    return bytes(sha256(data).digest())


def _cert_fields(key_type: str, blob: bytes) -> dict[str, Any]:
    """Serial, key id and the certified key of an OpenSSH certificate (PROTOCOL.certkeys).

    `key` becomes the fingerprint of the certified public key (what sshd logs and
    `ssh-keygen -l` prints); the certificate's own hash goes to `cert`.
    """
    import struct

    per_key = {
        "ssh-ed25519": 1,
        "ssh-rsa": 2,
        "ecdsa-sha2-nistp256": 2,
        "ecdsa-sha2-nistp384": 2,
        "ecdsa-sha2-nistp521": 2,
    }
    base = key_type.replace("-cert-v01@openssh.com", "")
    skip = per_key.get(base)
    if skip is None:
        return {"cert": _fingerprint(blob)}
    try:
        off = 0
        for _ in range(2):  # type name, nonce
            (n,) = struct.unpack_from(">I", blob, off)
            off += 4 + n
        key_start = off
        for _ in range(skip):  # the public key's own fields
            (n,) = struct.unpack_from(">I", blob, off)
            off += 4 + n
        plain = struct.pack(">I", len(base)) + base.encode() + blob[key_start:off]
        (serial,) = struct.unpack_from(">Q", blob, off)
        off += 8 + 4  # serial, cert type
        (n,) = struct.unpack_from(">I", blob, off)
        key_id = blob[off + 4 : off + 4 + n].decode("utf-8", "replace")
    except struct.error:
        return {"cert": _fingerprint(blob)}
    return {
        "key": _fingerprint(plain),
        "cert": _fingerprint(blob),
        "cert_serial": serial,
        "cert_key_id": key_id,
    }


class AuditLog:
    """Writes records to the policy's destination; raises GateError(AUDIT) when it cannot."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._lock = allocate_lock()  # a bridge's threads write records too

    def write(self, record: dict[str, Any]) -> None:
        line = bounded_line(record)
        with self._lock:
            try:
                if self.settings.destination == "file":
                    self._write_file(line)
                else:
                    self._write_syslog(line)
            except OSError as exc:
                self.close()
                where = (
                    self.settings.path
                    if self.settings.destination == "file"
                    else (f"syslog socket {self.settings.socket}")
                )
                raise GateError(
                    Exit.AUDIT,
                    f"audit record cannot be written to {where}: "
                    f"{exc.strerror or exc}; refusing (fail closed)",
                ) from None

    def _write_file(self, line: str) -> None:
        if self._fd is None:
            self._fd = os.open(
                self.settings.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o640,
            )
        data = (line + "\n").encode()
        # One write() of an O_APPEND fd: concurrent gates never interleave a record.
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(0, f"short write ({written} of {len(data)} bytes)")

    def _write_syslog(self, line: str) -> None:
        if self._sock is None:
            import socket

            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(self.settings.socket)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        msg = f"<{_PRI}>{stamp} logtorukun-gate[{os.getpid()}]: {line}"
        self._sock.send(msg.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
