"""Short-lived SSH user certificates, signed in process: one per (person, worker) connection.

The certificate says who the connection is for (key id = the web or CLI user), which
account it may log in as (principal = the gate user), how long (`validity`, default five
minutes, backdated a minute for clock skew), from where (`source-address`) and what it
may run (`force-command` = the gate command line, byte for byte the `command=` of the
worker's principals line: sshd refuses a login when the two differ). It grants no pty,
no forwarding, no user rc. Its serial is unique and goes into the web audit record; the
gate puts key id and serial into its own record, so the two trails join on the serial.

The CA key is read from a file (kept 0600 on the web server) or, with `agent = true`,
used through ssh-agent (`SSH_AUTH_SOCK`): the private key then never touches this disk,
and each signature is one `ssh-keygen -U` run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import asyncssh

from ..errors import UserError

if TYPE_CHECKING:
    from .settings import HostConfig


class CertSettings(Protocol):
    """What signing needs of the config's [ssh] table (config_ssh.SshSettings is one)."""

    @property
    def ca_key(self) -> Path | None: ...

    @property
    def agent(self) -> bool: ...

    @property
    def validity(self) -> float: ...

    @property
    def source_address(self) -> tuple[str, ...]: ...


DEFAULT_VALIDITY = 300.0
BACKDATE = 60.0  # seconds: a worker whose clock is a little behind still accepts it
SSH_KEYGEN = "/usr/bin/ssh-keygen"


class CertError(UserError):
    """The CA cannot sign (missing or unreadable key, no agent)."""


@dataclass(frozen=True)
class SignedKey:
    """A fresh key pair and its certificate; `valid_before` in epoch seconds."""

    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate
    key_id: str
    serial: int
    valid_before: float

    def expires_in(self, now: float | None = None) -> float:
        return self.valid_before - (time.time() if now is None else now)


def new_serial() -> int:
    """Unique enough to join two audit trails on, and never 0 (which KRLs cannot name)."""
    return secrets.randbits(63) | 1


class CertSigner:
    def __init__(
        self,
        ca_key: Path,
        *,
        agent: bool = False,
        validity: float = DEFAULT_VALIDITY,
    ) -> None:
        self.ca_path = ca_key
        self.agent = agent
        self.validity = validity
        self.signed = 0
        self._lock = threading.Lock()
        self._ca: asyncssh.SSHKey | None = None
        if agent:
            if not os.environ.get("SSH_AUTH_SOCK"):
                raise CertError(
                    "certificates via ssh-agent need SSH_AUTH_SOCK (start the server under "
                    "an ssh-agent holding the CA key: ssh-add /path/to/user_ca)"
                )
            pub = ca_key if ca_key.suffix == ".pub" else ca_key.with_name(ca_key.name + ".pub")
            if not pub.is_file():
                raise CertError(f"{pub}: the CA's public key is needed to sign via ssh-agent")
            self._ca_pub = pub
        else:
            try:
                self._ca = asyncssh.read_private_key(str(ca_key))
            except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
                why = getattr(exc, "strerror", None) or str(exc)
                raise CertError(
                    f"{ca_key}: cannot read the user CA key ({why}); create one with "
                    "logtorukun ca init, or use the agent"
                ) from None

    def sign(
        self,
        key_id: str,
        principal: str,
        *,
        force_command: str | None,
        source_address: Sequence[str] = (),
        validity: float | None = None,
        now: float | None = None,
    ) -> SignedKey:
        """A new ed25519 key and its certificate. Blocking (a few hundred µs in process,
        a few ms via the agent): call it from a thread, not the event loop."""
        if not key_id or any(c in key_id for c in "\r\n\0"):
            raise CertError(f"{key_id!r} cannot be a certificate key id")
        start = time.time() if now is None else now
        before = start + (self.validity if validity is None else validity)
        serial = new_serial()
        key = asyncssh.generate_private_key("ssh-ed25519")
        cert: asyncssh.SSHCertificate
        if self._ca is not None:
            cert = self._ca.generate_user_certificate(
                key,
                key_id,
                serial=serial,
                principals=[principal],
                valid_after=int(start - BACKDATE),
                valid_before=int(before),
                force_command=force_command,
                source_address=list(source_address) or None,
                permit_x11_forwarding=False,
                permit_agent_forwarding=False,
                permit_port_forwarding=False,
                permit_pty=False,
                permit_user_rc=False,
            )
        else:
            cert = self._sign_with_agent(
                key, key_id, serial, principal, force_command, source_address, start, before
            )
        with self._lock:
            self.signed += 1
        return SignedKey(key, cert, key_id, serial, float(int(before)))

    def _sign_with_agent(
        self,
        key: asyncssh.SSHKey,
        key_id: str,
        serial: int,
        principal: str,
        force_command: str | None,
        source_address: Sequence[str],
        start: float,
        before: float,
    ) -> asyncssh.SSHCertificate:
        fmt = "%Y%m%d%H%M%S"
        window = (
            time.strftime(fmt, time.gmtime(start - BACKDATE))
            + ":"
            + time.strftime(fmt, time.gmtime(before))
        )
        with tempfile.TemporaryDirectory(prefix="logtorukun-sign-") as tmp:
            pub = Path(tmp) / "key.pub"
            key.write_public_key(str(pub))
            argv = [
                SSH_KEYGEN, "-q", "-U", "-s", str(self._ca_pub), "-I", key_id,
                "-n", principal, "-z", str(serial), "-V", window, "-O", "clear",
            ]  # fmt: skip
            if force_command is not None:
                argv += ["-O", f"force-command={force_command}"]
            if source_address:
                argv += ["-O", f"source-address={','.join(source_address)}"]
            env = {**os.environ, "TZ": "UTC"}
            out = subprocess.run(
                [*argv, str(pub)], capture_output=True, text=True, check=False, env=env
            )
            if out.returncode != 0:
                raise CertError(
                    f"ssh-agent could not sign with {self._ca_pub}: "
                    f"{out.stderr.strip() or out.returncode} (is the CA key added: ssh-add -l?)"
                )
            return asyncssh.read_certificate(str(pub.with_name("key-cert.pub")))


@dataclass(frozen=True)
class CertPolicy:
    """What the pool needs to sign for a (worker, person) connection."""

    signer: CertSigner
    source_address: tuple[str, ...] = ()
    # The key id of connections made for the server itself (probes, no person).
    server_key_id: str = "logtorukun-web"
    # The force-command for a host whose config names none: what `worker setup`
    # installs for its user (given by the caller; the client knows no install layout).
    default_command: Callable[[str], str] | None = None

    @property
    def renew_before(self) -> float:
        """Open a fresh connection this long before the certificate expires."""
        return min(60.0, self.signer.validity / 5)

    def sign_for(self, host: HostConfig, identity: str | None) -> SignedKey:
        return self.signer.sign(
            identity or self.server_key_id,
            host.user,
            force_command=self._command(host),
            source_address=self.source_address,
        )

    def _command(self, host: HostConfig) -> str:
        if host.gate_command is not None:
            return host.gate_command
        if self.default_command is None:
            raise CertError(f"{host.name}: set gate_command in its [[host]] (certificates)")
        return self.default_command(host.user)

    @classmethod
    def from_settings(
        cls,
        ssh: CertSettings,
        server_key_id: str | None = None,
        default_command: Callable[[str], str] | None = None,
    ) -> CertPolicy:
        """`server_key_id`: the key id of connections made for no one in particular (the
        web server's probes; for the CLI, the person running it). `default_command`:
        see the field."""
        if ssh.ca_key is None:
            raise CertError("[ssh] certificates = true needs ca_key")
        signer = CertSigner(ssh.ca_key, agent=ssh.agent, validity=ssh.validity)
        if server_key_id is None:
            return cls(signer, ssh.source_address, default_command=default_command)
        return cls(signer, ssh.source_address, server_key_id, default_command)


def cli_identity(explicit: str | None) -> str:
    """Who a terminal read is for: `--as USER`, else the login behind sudo, else ours."""
    import getpass

    name = explicit or os.environ.get("SUDO_USER") or getpass.getuser()
    if not name or any(c.isspace() or c in "\0," for c in name) or len(name) > 64:
        raise CertError(f"--as {name!r}: give a user name (letters, digits, . _ -)")
    return name
