"""How the forwarder hands a batch of audit records to a SIEM collector, and knows it arrived.

Two transports, both synchronous (the forwarder runs them in its own thread):

- `SyslogTransport`: RFC 5424 over TCP, octet-counted framing (RFC 6587 3.4.1), plain or
  TLS (RFC 5425). Syslog over TCP has no acknowledgement, so a batch is sent on its own
  connection and counts as delivered only when the collector has read all of it: we end
  our side (TCP FIN, or TLS close_notify), the collector closes its side once it has read
  to that end, and the kernel reports no byte of ours still unacknowledged. A collector
  that dies or stops with data unread resets the connection instead, and the batch is
  sent again (at least once; the receiver sees the same seq twice).
- `HttpsTransport`: one POST of JSON lines per batch; any 2xx is the acknowledgement.

Each record keeps its seq and hash (in the JSON and, for syslog, in structured data), so a
receiver detects duplicates and gaps and can re-check the hash chain (records.py).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import ssl
import struct
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import AuditError
from .records import AuditRecord

if TYPE_CHECKING:
    from .sinks import Checkpoint

# RFC 5612's documentation enterprise number: receivers match the SD-ID by its name.
SD_ID = "logtorukun@32473"
_AUTHPRIV = 10
_INFO, _NOTICE = 6, 5


class DeliveryError(Exception):
    """The batch was not confirmed; the forwarder keeps its position and retries."""


class Transport(Protocol):
    description: str

    def deliver(
        self, records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint] = ()
    ) -> None:
        """Return only once the collector has the whole batch (records, then the chain
        checkpoints they complete); raise DeliveryError if not."""


def syslog_frame(record: AuditRecord, hostname: str, app: str = "logtorukun") -> bytes:
    """One octet-counted RFC 5424 message: `LEN SP <PRI>1 TS HOST APP - MSGID [SD] JSON`."""
    severity = _NOTICE if record.decision == "deny" else _INFO
    ts = record.ts.replace("+00:00", "Z")
    sd = f'[{SD_ID} seq="{record.seq}" hash="{record.hash}"]'
    msg = f"<{_AUTHPRIV * 8 + severity}>1 {ts} {hostname} {app} - {record.event} {sd} "
    data = msg.encode("ascii") + record.to_json().encode("utf-8")
    return str(len(data)).encode("ascii") + b" " + data


def checkpoint_frame(cp: Checkpoint, hostname: str, app: str = "logtorukun") -> bytes:
    """A chain checkpoint (sinks.Checkpoint) as RFC 5424, MSGID `checkpoint`."""
    ts = cp.ts.replace("+00:00", "Z")
    sd = f'[{SD_ID} seq="{cp.seq}" hash="{cp.hash}"]'
    msg = f"<{_AUTHPRIV * 8 + _NOTICE}>1 {ts} {hostname} {app} - checkpoint {sd} "
    data = msg.encode("ascii") + cp.to_json().encode("utf-8")
    return str(len(data)).encode("ascii") + b" " + data


def _printable_hostname(name: str) -> str:
    """RFC 5424 HOSTNAME: 1-255 printable US-ASCII characters, no spaces."""
    cleaned = "".join(c for c in name if 33 <= ord(c) <= 126)[:255]
    return cleaned or "-"


def _unacked_bytes(sock: socket.socket) -> int:
    """Bytes we sent that the peer's TCP has not acknowledged (Linux SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


class SyslogTransport:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        server_name: str | None = None,
        hostname: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.hostname = _printable_hostname(hostname or socket.gethostname())
        scheme = "syslog+tls" if tls else "syslog+tcp"
        self.description = f"{scheme}://{host}:{port}"
        self._ssl: ssl.SSLContext | None = None
        self._server_name = server_name or host
        if tls:
            self._ssl = client_tls(ca_file, cert_file, key_file)

    def deliver(
        self, records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint] = ()
    ) -> None:
        payload = b"".join(syslog_frame(r, self.hostname) for r in records)
        payload += b"".join(checkpoint_frame(c, self.hostname) for c in checkpoints)
        deadline = time.monotonic() + self.timeout
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {self.description}: {_why(exc)}") from None
        sock = raw
        try:
            if self._ssl is not None:
                # wrap_socket takes over raw's descriptor: from here on, use the wrapper.
                sock = self._ssl.wrap_socket(raw, server_hostname=self._server_name)
                sock.sendall(payload)
                sock = self._end_tls(sock, deadline)
            else:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
                self._await_close(raw, deadline)
            self._await_acked(sock, deadline)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(
                f"{self.description}: batch of {len(records) + len(checkpoints)}"
                f" not confirmed: {_why(exc)}"
            ) from None
        finally:
            sock.close()
            raw.close()

    def _end_tls(self, tls: ssl.SSLSocket, deadline: float) -> socket.socket:
        """Our close_notify, then the collector's answer: it has read up to our end."""
        try:
            plain = tls.unwrap()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # rsyslog (GnuTLS) closes the TCP connection without its own close_notify once
            # it has read ours: a clean FIN is the same answer.
            return tls
        plain.shutdown(socket.SHUT_WR)
        self._await_close(plain, deadline)
        return plain

    def _await_close(self, sock: socket.socket, deadline: float) -> None:
        """Wait for the collector's FIN; data it sends meanwhile is ignored."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the collector did not close its side after our end")
            sock.settimeout(left)
            if not sock.recv(4096):
                return

    def _await_acked(self, sock: socket.socket, deadline: float) -> None:
        """A FIN alone could race with our last bytes; their TCP must have acked them all."""
        while _unacked_bytes(sock):
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, "connection reset before every byte was acknowledged")
            if time.monotonic() > deadline:
                raise TimeoutError("bytes still unacknowledged by the collector")
            time.sleep(0.001)


class HttpsTransport:
    """POST JSON lines; plain http only to a loopback address (a collector on this host)."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url, self.timeout, self.token = url, timeout, token
        parts = urlsplit(url)
        self.description = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = client_tls(ca_file, cert_file, key_file)

    def deliver(
        self, records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint] = ()
    ) -> None:
        lines = [r.to_json() for r in records] + [c.to_json() for c in checkpoints]
        body = "".join(line + "\n" for line in lines).encode("utf-8")
        seqs = [r.seq for r in records] or [c.seq for c in checkpoints]
        headers = {
            "Content-Type": "application/x-ndjson",
            "X-Logtorukun-Seq": f"{seqs[0]}-{seqs[-1]}",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:  # noqa: S310
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(
                f"{self.description}: HTTP {exc.code} {exc.reason} for seq {seqs[0]}-{seqs[-1]}"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{self.description}: {_why(reason)}") from None


def client_tls(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that checks the server against `ca_file` (None: the system's CAs),
    with our certificate for a collector that asks for one."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def read_token(path: Path, section: str) -> str:
    """A bearer token from its file; AuditError names the file and the setting."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read {section} token_file ({exc.strerror})") from None


def _why(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
