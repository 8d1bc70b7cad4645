"""A user CA and a worker that trusts only certificates it signed (real sshd)."""

from __future__ import annotations

from pathlib import Path

from logtorukun.ops.ca import init_ca, revoke
from logtorukun.ops.local_worker import HOST
from tests.support.sshd import USER, Worker


def make_ca(directory: Path) -> Path:
    init_ca(directory, host_ca=True)
    revoke(directory, "1")  # an (almost) empty KRL, so RevokedKeys has a file to read
    directory.chmod(0o755)  # sshd reads the public key and the KRL as root
    return directory


def principals_line(worker: Worker, source: str = HOST) -> str:
    """What `worker setup --trust-ca` writes: restrict, from= and the gate as command=."""
    command = worker.gate_command().replace('"', '\\"')
    return f'restrict,from="{source}",command="{command}" {USER}\n'


def cert_worker(ca: Path, name: str = "certs") -> Worker:
    """Not started: TrustedUserCAKeys, a principals file, a KRL, no authorized_keys."""
    w = Worker(name=name)
    principals = w.dir / "principals"
    principals.mkdir(mode=0o755)
    (principals / USER).write_text(principals_line(w))
    w.sshd_options = [
        f"TrustedUserCAKeys {ca / 'user_ca.pub'}",
        f"AuthorizedPrincipalsFile {principals}/%u",
        "AuthorizedKeysFile none",
        f"RevokedKeys {ca / 'revoked.krl'}",
    ]
    return w
