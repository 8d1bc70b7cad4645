"""`worker setup --trust-ca`: the worker accepts certificates of the user CA for the gate
user (principals line with restrict, from= and the gate as command=, a KRL), a plain key
no more; `worker remove` undoes it. Against the setup's own real sshd."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.client.certs import CertSigner
from logtorukun.ops.bundle import gate_command
from logtorukun.ops.ca import init_ca, revoke
from logtorukun.ops.worker_spec import Layout
from tests.ops.worker_box import USER, Box, box  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def cert_files(signer: CertSigner, directory: Path, name: str, command: str) -> Path:
    signed = signer.sign(name, USER, force_command=command, source_address=["127.0.0.1/32"])
    key = directory / f"{name}-{signed.serial}"
    signed.key.write_private_key(str(key))
    key.chmod(0o600)
    signed.cert.write_certificate(str(key) + "-cert.pub")
    return key


def ssh_with(b: Box, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    return b.ssh(command, "-i", str(key), "-o", f"CertificateFile={key}-cert.pub")


def test_trust_ca_setup_serves_certificates_and_remove_undoes_it(
    box: Box,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = tmp_path / "ca"
    init_ca(ca)
    argv = [a for a in box.setup_argv() if a not in ("--key", f"{box.key}.pub")]
    argv += ["--trust-ca", str(ca / "user_ca.pub")]
    assert main(argv) == 0
    lay = Layout(box.root, USER)
    command = gate_command(lay.gate_entry, lay.policy)
    assert lay.principals.read_text() == (f'restrict,from="127.0.0.1",command="{command}" {USER}\n')
    dropin = lay.sshd_dropin.read_text()
    assert f"TrustedUserCAKeys {lay.user_ca}" in dropin
    assert f"RevokedKeys {lay.krl}" in dropin and lay.krl.exists()
    capsys.readouterr()

    box.start_sshd()
    signer = CertSigner(ca / "user_ca")
    good = cert_files(signer, tmp_path, "olivia", command)
    deadline = time.monotonic() + 30
    while (r := ssh_with(box, good, f"tail -n 1 {box.logs}/app.log")).returncode != 0:
        assert time.monotonic() < deadline, r.stderr + (box.root / "sshd.log").read_text()[-2000:]
        time.sleep(0.1)
    assert r.stdout == "2024-12-17 14:03:05 ERROR [payments] charge failed\n"
    # No --key: the web server's plain key is not accepted.
    assert box.ssh(f"tail -n 1 {box.logs}/app.log").returncode == 255
    # One byte more in the certificate's force-command: refused.
    other = cert_files(signer, tmp_path, "olivia", command + " ")
    assert ssh_with(box, other, "help").returncode == 255

    # Revocation: the operator replaces the KRL; setup does not put the empty one back.
    revoke(ca, str(int(good.name.rsplit("-", 1)[1])))
    shutil.copyfile(ca / "revoked.krl", lay.krl)
    assert ssh_with(box, good, "help").returncode == 255
    fresh = cert_files(signer, tmp_path, "olivia", command)
    assert ssh_with(box, fresh, "help").returncode == 0
    assert main(argv) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert lay.krl.read_bytes() == (ca / "revoked.krl").read_bytes()

    assert main(box.remove_argv()) == 0
    for p in (lay.user_ca, lay.principals, lay.krl, lay.sshd_dropin):
        assert not p.exists(), p


def test_setup_needs_a_key_or_a_ca(box: Box, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = [a for a in box.setup_argv() if a not in ("--key", f"{box.key}.pub")]
    assert main(argv) == 2
    assert "give --key PUBKEY_FILE" in capsys.readouterr().err
    assert main([*argv, "--trust-ca", f"{box.key}"]) == 2  # the private key by mistake
    assert "--trust-ca" in capsys.readouterr().err
