"""A real rsyslog collector for tests: its own config, a loopback port, a file it writes.

`Collector.stop()` stops it the way an operator would (SIGTERM: it writes what it has
read, then exits); `start()` brings it back on the same port. `records()` parses the
file: one JSON audit record per line (the template writes the syslog MSG, which the
forwarder fills with the record's JSON).
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

RSYSLOGD = "/usr/sbin/rsyslogd"
HOST = "127.0.0.1"
_RUNNING: set[Collector] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (CA and server in one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class Collector:
    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.out = self.dir / "received.log"
        self.conf = self.dir / "rsyslog.conf"
        self.cert: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    @property
    def url(self) -> str:
        return f"syslog+{'tls' if self.tls else 'tcp'}://{HOST}:{self.port}"

    def _write_conf(self) -> None:
        tls_global = tls_module = ""
        if self.tls:
            self.cert, key = make_tls_cert(self.dir)
            tls_global = (
                f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{self.cert}"'
                f' defaultNetstreamDriverCertFile="{self.cert}"'
                f' defaultNetstreamDriverKeyFile="{key}"'
            )
            tls_module = ' streamDriver.name="gtls" streamDriver.mode="1"'
            tls_module += ' streamDriver.authMode="anon"'
        self.conf.write_text(
            f'global(workDirectory="{self.dir}" maxMessageSize="64k"{tls_global})\n'
            f'module(load="imtcp"{tls_module})\n'
            f'input(type="imtcp" port="{self.port}" address="{HOST}")\n'
            'template(name="msgonly" type="string" string="%msg%\\n")\n'
            f'action(type="omfile" file="{self.out}" template="msgonly")\n'
        )

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        (self.dir / "rsyslogd.pid").unlink(missing_ok=True)  # left by a SIGKILL
        log = (self.dir / "rsyslogd.out").open("ab")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rsyslogd exited ({self.proc.returncode}): "
                    + (self.dir / "rsyslogd.out").read_text(errors="replace")[-2000:]
                )
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen on {HOST}:{self.port} in {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections and data, nobody reads them."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        # The signal is asynchronous: wait until every thread is stopped (state T).
        tasks = Path(f"/proc/{self.proc.pid}/task")
        deadline = time.monotonic() + 10
        while not all(
            (t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks.iterdir()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("rsyslogd did not stop on SIGSTOP")
            time.sleep(0.001)

    def unread_bytes(self) -> int:
        """Bytes sitting in the receive queues of connections to our port (/proc/net/tcp)."""
        total = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == self.port and fields[3] in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                total += int(fields[4].split(":")[1], 16)
        return total

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON line received: audit records and chain checkpoints, in order."""
        try:
            text = self.out.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # rsyslog may be half-way through writing the last line: only whole lines count
        whole = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        return [r for r in self.lines() if "checkpoint" not in r]

    def checkpoints(self) -> list[dict[str, Any]]:
        return [r["checkpoint"] for r in self.lines() if "checkpoint" in r]

    def seqs(self) -> list[int]:
        return [int(r["seq"]) for r in self.records()]

    def wait_for_seq(self, seq: int, timeout: float = 30.0) -> list[int]:
        """Wait until a record with this seq is in the file; returns every seq seen."""
        deadline = time.monotonic() + timeout
        while True:
            seqs = self.seqs()
            if seq in seqs:
                return seqs
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"seq {seq} did not reach rsyslog in {timeout} s; last seen "
                    f"{seqs[-5:] if seqs else 'nothing'}"
                )
            time.sleep(0.02)


@atexit.register
def _stop_all() -> None:
    for c in list(_RUNNING):
        c.stop(signal.SIGKILL)
