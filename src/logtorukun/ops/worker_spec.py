"""What `logtorukun worker setup` is asked for, checked, and where it puts each file.

The flags become a `Spec` here, so every later step (planning, rendering, applying) works
on values that are already validated: a key line without options, `from=` patterns
without quotes, file roots without `.` or `..`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .bundle import DEFAULT_PYTHON

DEFAULT_USER = "logtorukun"
# from= patterns: addresses, CIDR, host names and sshd's wildcards; never a quote.
_FROM = re.compile(r"!?[A-Za-z0-9.:/*?_-]+", re.ASCII)
_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,3}", re.ASCII)


@dataclass(frozen=True)
class Layout:
    """Where setup puts everything for one gate user; all paths below `root`."""

    root: Path
    user: str

    def p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.p("/etc/logtorukun")

    @property
    def policy(self) -> Path:
        return (
            self.etc / f"policy-{self.user}.toml"
            if self.user != DEFAULT_USER
            else self.etc / "policy.toml"
        )

    @property
    def gate_dir(self) -> Path:
        """The link to the gate's current build (ops/gate_install.py), root's, shared by
        every gate user: the forced command runs the entry through it."""
        return self.p("/usr/local/lib/logtorukun/gate")

    @property
    def gate_entry(self) -> Path:
        """What the forced command runs."""
        from .bundle import GATE_ENTRY

        return self.gate_dir / GATE_ENTRY

    @property
    def old_zipapp(self) -> Path:
        """Where setup installed the gate as one zipapp before; removed when found."""
        return self.p("/usr/local/lib/logtorukun/gate.pyz")

    @property
    def user_ca(self) -> Path:
        """`--trust-ca`: the user CA's public key (TrustedUserCAKeys)."""
        return self.etc / f"user_ca-{self.user}.pub"

    @property
    def principals(self) -> Path:
        """`--trust-ca`: the principals line, restricted like a key line."""
        return self.etc / "principals" / self.user

    @property
    def krl(self) -> Path:
        """`--trust-ca`: the revocation list; replaced by the operator (docs/operations.md)."""
        return self.etc / "revoked.krl"

    @property
    def keys_dir(self) -> Path:
        return self.etc / "authorized_keys"

    @property
    def authorized_keys(self) -> Path:
        return self.keys_dir / self.user

    @property
    def home(self) -> Path:
        return self.p(f"/var/lib/logtorukun/{self.user}")

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def audit_dir(self) -> Path:
        return self.p(f"/var/log/logtorukun/{self.user}")

    @property
    def sshd_config(self) -> Path:
        return self.p("/etc/ssh/sshd_config")

    @property
    def sshd_dropin(self) -> Path:
        return self.p(f"/etc/ssh/sshd_config.d/logtorukun-{self.user}.conf")

    @property
    def sudoers(self) -> Path:
        return self.p(f"/etc/sudoers.d/logtorukun-{self.user}")

    @property
    def logrotate_dir(self) -> Path:
        return self.p("/etc/logrotate.d")

    @property
    def manifest(self) -> Path:
        """What setup did that `remove` must undo (ACL grants, whether it made the user)."""
        return self.etc / f"worker-{self.user}.json"


@dataclass(frozen=True)
class FilesRule:
    root: str
    patterns: tuple[str, ...]


@dataclass
class Spec:
    """What the operator asked for, checked."""

    layout: Layout
    keys: list[str]  # "ssh-ed25519 AAAA... comment": two during a key rotation
    sources: list[str]  # from= patterns
    files: list[FilesRule] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    python: str = DEFAULT_PYTHON
    audit_file: Path | None = None  # None: syslog
    adopt_user: bool = False  # take over an existing account (remove gives it back)
    trust_ca: str | None = None  # `--trust-ca`: the user CA's public key line


def parse_files(values: Sequence[str]) -> list[FilesRule]:
    """`--files ROOT:PATTERN` (repeatable; PATTERN may be a comma list) -> rules by root."""
    by_root: dict[str, list[str]] = {}
    for value in values:
        root, sep, pats = value.partition(":")
        if not sep or not pats:
            raise UserError(f"--files {value!r}: write ROOT:PATTERN, e.g. /var/log/app:*.log")
        if not root.startswith("/") or "/.." in root or "/./" in f"{root}/":
            raise UserError(f"--files {value!r}: ROOT must be an absolute path without . or ..")
        if any(c.isspace() or c in "\"'\\" for c in value):
            raise UserError(f"--files {value!r}: no blanks, quotes or backslashes")
        for pat in pats.split(","):
            if not pat or pat.startswith("/") or "/." in f"/{pat}":
                raise UserError(
                    f"--files {value!r}: PATTERN is a glob relative to ROOT, without . or .."
                )
            root_key = root.rstrip("/") or "/"
            if pat not in by_root.setdefault(root_key, []):
                by_root[root_key].append(pat)
    return [FilesRule(r, tuple(p)) for r, p in by_root.items()]


def read_key(path: str, flag: str = "--key") -> str:
    """The one public key in `path`, as `TYPE BASE64 [COMMENT]`, checked."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise UserError(
            f"{flag} {path}: no such file (the web server's public key, *.pub)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path}: cannot read it ({exc})") from None
    if "PRIVATE KEY" in text:
        raise UserError(f"{flag} {path}: this is a private key; pass the .pub file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise UserError(f"{flag} {path}: expected exactly one public key line, found {len(lines)}")
    parts = lines[0].split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES or not _B64.fullmatch(parts[1]):
        raise UserError(
            f"{flag} {path}: not an OpenSSH public key line (TYPE BASE64 [COMMENT]) without"
            " options; pass the .pub file of the web server's key"
        )
    comment = " ".join(parts[2:])
    comment = re.sub(r"[^A-Za-z0-9@._:+-]", "_", comment)[:80]
    return " ".join([parts[0], parts[1], *([comment] if comment else [])])


def parse_from(values: Sequence[str]) -> list[str]:
    pats = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if not pats:
        raise UserError(
            "--from is required: the web server's address (or CIDR), so the key works from"
            " nowhere else"
        )
    for p in pats:
        if not _FROM.fullmatch(p):
            raise UserError(f"--from {p!r}: an address, CIDR or host name pattern")
    return pats


def default_gate_command(user: str) -> str:
    """The command= that `logtorukun worker setup` installs for this gate user (what a
    certificate must force when a host's config names no gate_command)."""
    from .bundle import gate_command

    layout = Layout(Path("/"), user)
    return gate_command(layout.gate_entry, layout.policy, python=DEFAULT_PYTHON)
