"""Short-lived user certificates against a real sshd that trusts only the user CA
(TrustedUserCAKeys, an AuthorizedPrincipalsFile line with restrict,from=,command=, a
KRL in RevokedKeys, no authorized_keys at all): a valid certificate reads and the
worker's audit names the person; every way a certificate can be wrong is refused."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from logtorukun.cli import main
from logtorukun.client import Client, PoolOptions
from logtorukun.client.certs import CertPolicy, CertSigner, SignedKey
from logtorukun.client.command_line import line_for
from logtorukun.client.errors import AuthRefused, HostKeyUnknown, Unreachable
from logtorukun.client.stream import Stream
from logtorukun.gate.vocabulary import Tail
from logtorukun.ops.ca import init_ca, public_key, revoke, sign_host
from logtorukun.ops.local_worker import HOST
from tests.client.helpers import host_for
from tests.support.certs import cert_worker as make_cert_worker
from tests.support.certs import make_ca
from tests.support.sshd import USER, Worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture(scope="module")
def cert_worker(ca: Path) -> Iterator[Worker]:
    w = make_cert_worker(ca)
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


# ------------------------------------------------------------------- through the pool


def cert_client(worker: Worker, ca: Path, validity: float = 300.0, **options: object) -> Client:
    policy = CertPolicy(CertSigner(ca / "user_ca", validity=validity), (f"{HOST}/32",))
    opts = PoolOptions(backoff_min=0.05, backoff_max=0.2, certs=policy, **options)  # type: ignore[arg-type]
    host = host_for(worker, gate_command=worker.gate_command())
    return Client([host], options=opts)


async def see(stream: Stream, path: Path, marker: str) -> None:
    """Append `marker` and read until it arrives through the follow."""
    with path.open("a") as f:
        f.write(f"{marker}\n")
    got = b""
    async with asyncio.timeout(20):
        while marker.encode() not in got:
            chunk = await stream.read()
            assert chunk, f"the follow ended before {marker} arrived: {got!r}"
            got += chunk


async def test_the_pool_connects_per_person(cert_worker: Worker, ca: Path) -> None:
    async with cert_client(cert_worker, ca) as client:
        cmd = f"tail -n 1 {cert_worker.app_log}"
        await client.run("w", cmd, via={"user": "olivia", "audit": 7})
        await client.run("w", cmd, via={"user": "pat", "audit": 8})
        await client.run("w", cmd, via={"user": "olivia", "audit": 9})
        olivia, pat = client.pool.get("w", "olivia"), client.pool.get("w", "pat")
        assert olivia.connects == 1 and pat.connects == 1
        assert olivia.signed is not None and pat.signed is not None
        assert olivia.signed.serial != pat.signed.serial
    starts = [r for r in cert_worker.audit_records() if r.get("via", {}).get("audit") in (7, 8, 9)]
    assert [(r["cert_key_id"], r["via"]["user"]) for r in starts] == [
        ("olivia", "olivia"),
        ("pat", "pat"),
        ("olivia", "olivia"),
    ]
    assert starts[0]["cert_serial"] == starts[2]["cert_serial"] == olivia.signed.serial


async def test_renewal_under_a_running_follow(cert_worker: Worker, ca: Path) -> None:
    """A certificate of 6 s: the follow started on it goes on past its renewal and its
    expiry; new requests get a new connection with a new certificate."""
    log = cert_worker.root / "renew.log"
    log.write_text("")
    log.chmod(0o644)
    async with cert_client(cert_worker, ca, validity=6) as client:
        via = {"user": "olivia", "audit": 1}
        # From offset 0 of the empty file: a line appended before the gate opened it
        # is delivered too (`tail -F -n 0` would start after it).
        start = (log.stat().st_ino, 0, None)
        stream = await client.stream("w", line_for(Tail(str(log), 0, True, start)), via=via)
        hc = client.pool.get("w", "olivia")
        first = hc.signed
        assert first is not None
        await see(stream, log, "before")
        renew_before = client.pool.options.certs.renew_before  # type: ignore[union-attr]
        while first.expires_in() > renew_before:  # wait for the renewal point itself
            await asyncio.sleep(0.05)
        await client.run("w", f"tail -n 1 {cert_worker.app_log}", via={"user": "olivia"})
        assert hc.renewals == 1 and hc.connects == 2
        assert hc.signed is not None and hc.signed.serial != first.serial
        await see(stream, log, "renewed")
        while first.expires_in() > -1:  # the follow's certificate is now expired
            await asyncio.sleep(0.05)
        await see(stream, log, "expired")
        await stream.aclose()


async def test_per_person_connections_are_bounded(cert_worker: Worker, ca: Path) -> None:
    async with cert_client(cert_worker, ca, max_user_connections=2) as client:
        cmd = f"tail -n 1 {cert_worker.app_log}"
        for user in ("u1", "u2", "u3"):
            await client.run("w", cmd, via={"user": user})
        people = {k for k in client.pool._conns if k[1] is not None}
        assert people == {("w", "u2"), ("w", "u3")}


async def test_a_refused_certificate_is_a_clear_error(cert_worker: Worker, ca: Path) -> None:
    other = cert_worker.root.parent / "other-ca"
    init_ca(other)
    policy = CertPolicy(CertSigner(other / "user_ca"), (f"{HOST}/32",))
    host = host_for(cert_worker, gate_command=cert_worker.gate_command())
    async with Client([host], options=PoolOptions(certs=policy)) as client:
        with pytest.raises(AuthRefused, match=r"refused certificate serial \d+ \(key id olivia\)"):
            await client.run("w", "help", via={"user": "olivia"})


# ------------------------------------------------------------------- host certificates


async def test_host_certificate_via_cert_authority(ca: Path, tmp_path: Path) -> None:
    """known_hosts holds only `@cert-authority * HOST_CA`: a worker whose host key the
    host CA signed is accepted; one with a plain (unsigned) host key is still refused."""
    signed_worker, plain_worker = Worker(name="hostcert"), Worker(name="hostplain")
    try:
        cert = sign_host(ca, signed_worker.host_key.with_suffix(".pub"), [HOST])
        signed_worker.sshd_options = [f"HostCertificate {cert}"]
        signed_worker.start()
        plain_worker.start()
        known = tmp_path / "known_hosts"
        known.write_text(f"@cert-authority * {public_key(ca, 'host_ca')}\n")
        hosts = [
            host_for(signed_worker, "signed", known_hosts=known),
            host_for(plain_worker, "plain", known_hosts=known),
        ]
        async with Client(hosts, options=PoolOptions(backoff_min=0.05)) as client:
            reply = await client.run("signed", f"tail -n 1 {signed_worker.app_log}")
            assert reply.data.strip() == signed_worker.app_log.read_bytes().splitlines()[-1]
            # asyncssh offers only certificate host key types when known_hosts trusts
            # only a CA for the host, so the plain worker cannot even agree on one.
            with pytest.raises((HostKeyUnknown, Unreachable)):
                await client.run("plain", "help")
        assert "no matching host key type found" in plain_worker.sshd_log()
        assert not [r for r in plain_worker.audit_records()]  # no gate ever ran
    finally:
        signed_worker.destroy()
        plain_worker.destroy()


# ------------------------------------------------------------------- the CLI


def cli_config(tmp_path: Path, worker: Worker, ca: Path, certificates: bool = True) -> Path:
    gate_cmd = worker.gate_command().replace("\\", "\\\\").replace('"', '\\"')
    text = (
        f'[[host]]\nname = "w"\naddress = "{HOST}"\nport = {worker.port}\nuser = "{USER}"\n'
        f'key = "{worker.client_key}"\nknown_hosts = "{worker.known_hosts}"\n'
        f'gate_command = "{gate_cmd}"\n'
    )
    if certificates:
        text += f'[ssh]\ncertificates = true\nca_key = "{ca / "user_ca"}"\n'
        text += f'source_address = ["{HOST}"]\n'
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_cli_reads_with_the_persons_certificate(
    cert_worker: Worker, ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cli_config(tmp_path, cert_worker, ca)
    before = len(cert_worker.audit_records())
    code = main(
        ["--config", str(cfg), "tail", "w", str(cert_worker.app_log), "-n", "1", "--as", "kim"]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.strip() == cert_worker.app_log.read_text().splitlines()[-1]
    ids = {r.get("cert_key_id") for r in cert_worker.audit_records()[before:]}
    assert "kim" in ids


def test_cli_as_without_certificates_is_one_clear_line(
    cert_worker: Worker, ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cli_config(tmp_path, cert_worker, ca, certificates=False)
    code = main(["--config", str(cfg), "tail", "w", str(cert_worker.app_log), "--as", "kim"])
    err = capsys.readouterr().err
    assert code == 2 and "--as kim: needs [ssh] certificates = true" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- doctor


def test_doctor_checks_the_certificate_and_names_gate_command(
    cert_worker: Worker, ca: Path
) -> None:
    from logtorukun.config_ssh import SshSettings
    from logtorukun.ops.doctor_certs import check_certificates

    ssh = SshSettings(certificates=True, ca_key=ca / "user_ca", source_address=(HOST,))
    good = host_for(cert_worker, gate_command=cert_worker.gate_command())
    (check,) = check_certificates(good, ssh)
    assert check.status == "pass" and "accepted" in check.detail
    bad = host_for(cert_worker, gate_command=cert_worker.gate_command() + " --x")
    (check,) = check_certificates(bad, ssh)
    assert check.status == "fail" and "refused" in check.detail
    assert "must equal gate_command" in check.fix and "--x" in check.fix
