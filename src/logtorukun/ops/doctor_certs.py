"""`logtorukun doctor` with `[ssh] certificates`: can this server sign, and does each
worker accept what it signs (principal, force-command = `gate_command`, source-address)?

sshd never tells a client why it refused a certificate, so the failure names every
setting that must agree, with `gate_command` first: a one-byte difference from the
principals line's `command=` is the usual cause.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..config import HostConfig
from ..config_ssh import SshSettings
from ..errors import UserError
from .doctor_probe import FAIL, PASS, Check, HostProbe

KEY_ID = "logtorukun-doctor"


def check_certificates(host: HostConfig, ssh: SshSettings) -> list[Check]:
    from ..client.certs import CertPolicy
    from .worker_spec import default_gate_command

    scope = f"host {host.name}"
    command = host.gate_command or default_gate_command(host.user)
    try:
        signed = CertPolicy.from_settings(ssh, KEY_ID).sign_for(host, None)
    except UserError as exc:
        return [Check(scope, "certificate signed", FAIL, str(exc), "fix [ssh] ca_key / agent")]
    with tempfile.TemporaryDirectory(prefix="logtorukun-doctor-") as d:
        key = Path(d) / "id"
        signed.key.write_private_key(str(key))
        key.chmod(0o600)
        signed.cert.write_certificate(f"{key}-cert.pub")
        probe = HostProbe(host, key).run("help", "-o", f"CertificateFile={key}-cert.pub")
    detail = (
        f"certificate serial {signed.serial} (key id {KEY_ID}, principal {host.user},"
        f" force-command {command!r})"
    )
    if probe.code == 0:
        return [Check(scope, "certificate accepted", PASS, detail + " accepted", "")]
    return [
        Check(
            scope,
            "certificate accepted",
            FAIL,
            detail + f" refused: {probe.err.strip()[-200:] or probe.code}",
            f"on the worker, the principals line's command= must equal gate_command"
            f" {command!r} byte for byte; TrustedUserCAKeys must hold the user CA; from= and"
            f" [ssh] source_address must include this server; the serial and {KEY_ID} must"
            " not be revoked; sshd's log on the worker names which",
        )
    ]
