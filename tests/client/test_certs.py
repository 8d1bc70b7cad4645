"""Short-lived user certificates against a real sshd that trusts only the user CA
(TrustedUserCAKeys, an AuthorizedPrincipalsFile line with restrict,from=,command=, a
KRL in RevokedKeys, no authorized_keys at all): a valid certificate reads and the
worker's audit names the person; every way a certificate can be wrong is refused."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from logtorukun.client.certs import CertSigner, SignedKey
from logtorukun.ops.ca import init_ca, revoke
from tests.support.sshd import HOST, USER, Worker

pytestmark = pytest.mark.slow


def principals_line(worker: Worker, source: str = HOST) -> str:
    command = worker.gate_command().replace('"', '\\"')
    return f'restrict,from="{source}",command="{command}" {USER}\n'


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "ca"
    init_ca(d, host_ca=True)
    revoke(d, "1")  # an (almost) empty KRL, so RevokedKeys has a file to read
    d.chmod(0o755)  # sshd reads the public key and the KRL as root; keep the test simple
    return d


@pytest.fixture(scope="module")
def cert_worker(ca: Path) -> Iterator[Worker]:
    w = Worker(name="certs")
    principals = w.dir / "principals"
    principals.mkdir(mode=0o755)
    (principals / USER).write_text(principals_line(w))
    w.sshd_options = [
        f"TrustedUserCAKeys {ca / 'user_ca.pub'}",
        f"AuthorizedPrincipalsFile {principals}/%u",
        "AuthorizedKeysFile none",
        f"RevokedKeys {ca / 'revoked.krl'}",
    ]
    try:
        w.start()
        yield w
    finally:
        w.destroy()


@pytest.fixture(scope="module")
def signer(ca: Path) -> CertSigner:
    return CertSigner(ca / "user_ca")


async def login(worker: Worker, signed: SignedKey, command: str = "help") -> str:
    async with asyncssh.connect(
        HOST,
        worker.port,
        username=USER,
        client_keys=[(signed.key, signed.cert)],
        known_hosts=str(worker.known_hosts),
        config=None,
        agent_path=None,
        preferred_auth="publickey",
        connect_timeout=10,
    ) as conn:
        result = await conn.run(command, check=False)
        return str(result.stdout)


def sign(signer: CertSigner, worker: Worker, key_id: str = "olivia", **kw: object) -> SignedKey:
    args: dict[str, object] = {
        "force_command": worker.gate_command(),
        "source_address": [f"{HOST}/32"],
    }
    args.update(kw)
    principal = str(args.pop("principal", USER))
    return signer.sign(key_id, principal, **args)  # type: ignore[arg-type]


def log_after(worker: Worker, offset: int) -> str:
    return worker.sshd_log()[offset:]


async def test_valid_certificate_reads_and_the_worker_names_the_person(
    cert_worker: Worker, signer: CertSigner
) -> None:
    signed = sign(signer, cert_worker, "olivia")
    out = await login(cert_worker, signed, f"tail -n 1 {cert_worker.app_log}")
    assert out.strip() == cert_worker.app_log.read_text().splitlines()[-1]
    (rec,) = [r for r in cert_worker.audit_records() if r.get("cert_serial") == signed.serial]
    assert rec["cert_key_id"] == "olivia" and rec["event"] != "end"
    # sshd's own line carries the same id and serial.
    assert f"ID olivia (serial {signed.serial})" in cert_worker.sshd_log()


async def test_a_plain_key_is_refused(cert_worker: Worker, signer: CertSigner) -> None:
    signed = sign(signer, cert_worker)
    plain = SignedKey(signed.key, None, "x", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(
            HOST,
            cert_worker.port,
            username=USER,
            client_keys=[plain.key],
            known_hosts=str(cert_worker.known_hosts),
            config=None,
            agent_path=None,
        ):
            pass


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("expired", "expired"),
        ("principal", "Certificate does not contain an authorized principal"),
        ("source", "source address"),
        ("force_command", "forced command options do not match"),
        ("other_ca", "Failed publickey for .* ED25519-CERT .* ID olivia"),
    ],
)
async def test_wrong_certificates_are_refused(
    cert_worker: Worker, signer: CertSigner, tmp_path: Path, case: str, why: str
) -> None:
    if case == "expired":
        signed = sign(signer, cert_worker, now=time.time() - 3600)
    elif case == "principal":
        signed = sign(signer, cert_worker, principal="root")
    elif case == "source":
        signed = sign(signer, cert_worker, source_address=["192.0.2.7/32"])
    elif case == "force_command":
        signed = sign(signer, cert_worker, force_command=cert_worker.gate_command() + " ")
    else:
        other = tmp_path / "other"
        init_ca(other)
        signed = sign(CertSigner(other / "user_ca"), cert_worker)
    before = len(cert_worker.sshd_log())
    with pytest.raises(asyncssh.PermissionDenied):
        await login(cert_worker, signed)
    log = log_after(cert_worker, before)
    assert re.search(why, log, re.I), log
    assert "Accepted" not in log


async def test_revoked_serial_and_user(cert_worker: Worker, signer: CertSigner, ca: Path) -> None:
    first, second = sign(signer, cert_worker, "rita"), sign(signer, cert_worker, "rita")
    assert "help" in (await login(cert_worker, first)).lower()
    revoke(ca, str(first.serial))
    before = len(cert_worker.sshd_log())
    with pytest.raises(asyncssh.PermissionDenied):
        await login(cert_worker, first)
    assert "revoked" in log_after(cert_worker, before).lower()
    assert "help" in (await login(cert_worker, second)).lower()  # only that serial
    revoke(ca, "rita")
    with pytest.raises(asyncssh.PermissionDenied):
        await login(cert_worker, second)
    with pytest.raises(asyncssh.PermissionDenied):
        await login(cert_worker, sign(signer, cert_worker, "rita"))
    assert "help" in (await login(cert_worker, sign(signer, cert_worker, "dan"))).lower()
