"""`logtorukun ca init|show|sign-host|revoke`: the SSH certificate authorities.

Layout of the CA directory (default /etc/logtorukun/ca, 0700 root):

    user_ca, user_ca.pub   signs the short-lived user certificates (web server, CLI)
    host_ca, host_ca.pub   (optional, `init --host-ca`) signs workers' host keys
    revoked.krl            OpenSSH key revocation list; workers point RevokedKeys at it
    revoked.txt            what was revoked, when (the KRL is binary)

The private halves are 0600 and never leave this directory unless the operator moves
them: the web server signs from `user_ca` (or, better, from an ssh-agent holding it: see
docs/operations.md), and `host_ca` belongs offline once the workers' host keys are
signed. Every file operation goes through ssh-keygen, the reference implementation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from ..errors import UserError

DEFAULT_DIR = Path("/etc/logtorukun/ca")
SSH_KEYGEN = "/usr/bin/ssh-keygen"
USER_CA, HOST_CA, KRL, REVOKED = "user_ca", "host_ca", "revoked.krl", "revoked.txt"


class CAError(UserError):
    """The CA directory is missing, incomplete, or the request is wrong."""


def _keygen(*argv: str) -> str:
    out = subprocess.run([SSH_KEYGEN, *argv], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise CAError(f"ssh-keygen {' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout


def init_ca(directory: Path, *, host_ca: bool = False) -> list[Path]:
    """Create the CA keys; an existing key is never overwritten."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    made: list[Path] = []
    for name, wanted in ((USER_CA, True), (HOST_CA, host_ca)):
        path = directory / name
        if not wanted or path.exists():
            continue
        old = os.umask(0o077)
        try:
            _keygen("-q", "-t", "ed25519", "-N", "", "-C", f"logtorukun {name}", "-f", str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        os.chmod(path.with_name(name + ".pub"), 0o644)
        made.append(path)
    return made


def public_key(directory: Path, name: str) -> str:
    path = directory / f"{name}.pub"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CAError(f"{path}: no such CA key (logtorukun ca init --dir {directory})") from None


def show_ca(directory: Path) -> str:
    lines = [f"# user CA: TrustedUserCAKeys on the workers ({directory / USER_CA}.pub)"]
    lines.append(public_key(directory, USER_CA))
    if (directory / f"{HOST_CA}.pub").exists():
        lines.append("# host CA: this line in the web server's known_hosts accepts every")
        lines.append("# worker whose host key it signed (logtorukun ca sign-host)")
        lines.append(f"@cert-authority * {public_key(directory, HOST_CA)}")
    return "\n".join(lines)


def sign_host(directory: Path, host_pub: Path, names: list[str], validity: str = "+52w") -> Path:
    """Sign a worker's host public key; returns the `-cert.pub` written beside it."""
    ca = directory / HOST_CA
    if not ca.exists():
        raise CAError(f"{ca}: no host CA (logtorukun ca init --host-ca --dir {directory})")
    if not host_pub.name.endswith(".pub") or not host_pub.is_file():
        raise CAError(f"{host_pub}: give the worker's host PUBLIC key (…/ssh_host_*_key.pub)")
    if not names or any(not n or "," in n or n.strip() != n for n in names):
        raise CAError("--name: the worker's host names or addresses, e.g. --name web1.example")
    key_id = f"host {names[0]}"
    _keygen("-q", "-s", str(ca), "-h", "-I", key_id, "-n", ",".join(names), "-V", validity,
            str(host_pub))  # fmt: skip
    return host_pub.with_name(host_pub.name[: -len(".pub")] + "-cert.pub")


def revoke(directory: Path, what: str) -> str:
    """Add a serial (a number) or a key id (a user name) to the KRL."""
    ca_pub = directory / f"{USER_CA}.pub"
    if not ca_pub.exists():
        raise CAError(f"{ca_pub}: no user CA (logtorukun ca init --dir {directory})")
    what = what.strip()
    if what.isdigit():
        serial = int(what)
        if not 0 < serial < 2**64:
            raise CAError(f"{what}: a serial is between 1 and 2^64-1")
        spec = f"serial: {serial}"
    elif what and not any(c.isspace() for c in what):
        spec = f"id: {what}"
    else:
        raise CAError(f"{what!r}: give a certificate serial (a number) or a user name")
    krl = directory / KRL
    spec_file = directory / ".revoke-spec"
    spec_file.write_text(spec + "\n", encoding="utf-8")
    try:
        _keygen("-k", *(["-u"] if krl.exists() else []), "-f", str(krl), "-s", str(ca_pub),
                str(spec_file))  # fmt: skip
    finally:
        spec_file.unlink(missing_ok=True)
    os.chmod(krl, 0o644)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with (directory / REVOKED).open("a", encoding="utf-8") as f:
        f.write(f"{stamp} {spec}\n")
    return spec


# --------------------------------------------------------------------------- the CLI


def cmd_ca(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.ca_command == "init":
        made = init_ca(directory, host_ca=args.host_ca)
        for path in made:
            print(f"created {path} (0600) and {path}.pub")
        if not made:
            print(f"{directory}: the CA keys exist already; nothing changed")
        print(show_ca(directory))
    elif args.ca_command == "show":
        print(show_ca(directory))
    elif args.ca_command == "sign-host":
        cert = sign_host(directory, Path(args.host_key), args.name, args.validity)
        print(f"wrote {cert}: add `HostCertificate {cert}` to the worker's sshd_config")
    elif args.ca_command == "revoke":
        spec = revoke(directory, args.what)
        print(f"revoked {spec} in {directory / KRL}: copy it to every worker (RevokedKeys)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ca",
        help="SSH certificate authorities: init, show, sign-host, revoke",
        description="Create and use the user and host CAs (docs/operations.md).",
    )
    p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"CA directory (default {DEFAULT_DIR})")
    cmds = p.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    i = cmds.add_parser("init", help="create the user CA (and with --host-ca the host CA)")
    i.add_argument("--host-ca", action="store_true", help="also create a host CA")
    cmds.add_parser("show", help="print the public keys and the lines that trust them")
    s = cmds.add_parser("sign-host", help="sign a worker's host public key with the host CA")
    s.add_argument("host_key", metavar="HOST_KEY.pub")
    s.add_argument("--name", action="append", required=True, help="host name (repeatable)")
    s.add_argument("--validity", default="+52w", help="ssh-keygen -V form (default +52w)")
    r = cmds.add_parser("revoke", help="revoke a certificate serial or every cert of a user")
    r.add_argument("what", metavar="SERIAL|USER")
    for parser in (p, i, s, r):
        parser.set_defaults(func=cmd_ca)
    cmds.choices["show"].set_defaults(func=cmd_ca)
