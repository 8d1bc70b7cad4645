"""`logtorukun worker setup|remove`: the brief's Phase 0/1 on a worker, in one command.

Everything the brief asks a worker to have is written from flags, shown before it is
done (`--dry-run`), done only where the machine differs (a second run changes
nothing), and undone by `remove`:

- a dedicated system user with no password and `/bin/sh` (sshd runs the forced
  command through the login shell; the command string holds only checked paths);
- the gate zipapp and a policy file written from `--files/--unit/--container`;
- the web server's key in a root-owned authorized_keys file, as
  `restrict,from="ADDR",command="<gate> --policy <file>" KEY`;
- an sshd `Match User` drop-in: key only, no forwarding, no TTY, no ~/.ssh/rc, auth
  info exposed to the gate, and `ForceCommand` as a second lock behind `command=`;
- read access to the log files through POSIX ACLs (the files' owner and mode stay as
  they are), with a default ACL so files created by a rotation inherit it, and a
  check of logrotate's `create` mode (a mode without group read masks the ACL);
- for containers, the exact-argv sudoers rule from docs/gate.md (never the docker group).

sshd is validated with `sshd -t` before it is told to reload; a config it rejects is
rolled back. `--root DIR` writes every file below DIR (tests point it at a throwaway
sshd config directory), so the machine's own sshd is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import json
import os
import pwd
import re
import signal
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..gate.policy import CONTAINER_NAME, UNIT_NAME
from . import system
from .bundle import DEFAULT_PYTHON, build_gate_zipapp, gate_command

DEFAULT_USER = "logtorukun"
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}", re.ASCII)
# from= patterns: addresses, CIDR, host names and sshd's wildcards; never a quote.
_FROM = re.compile(r"!?[A-Za-z0-9.:/*?_-]+", re.ASCII)
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")  # fmt: skip
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,3}", re.ASCII)


# --------------------------------------------------------------------------- the layout


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
        return self.etc / f"policy-{self.user}.toml" if self.user != DEFAULT_USER \
            else self.etc / "policy.toml"  # fmt: skip

    @property
    def zipapp(self) -> Path:
        return self.p("/usr/local/lib/logtorukun/gate.pyz")

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


def read_key(path: str) -> str:
    """The one public key in `path`, as `TYPE BASE64 [COMMENT]`, checked."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise UserError(
            f"--key {path}: no such file (the web server's public key, *.pub)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--key {path}: cannot read it ({exc})") from None
    if "PRIVATE KEY" in text:
        raise UserError(f"--key {path}: this is a private key; pass the .pub file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise UserError(f"--key {path}: expected exactly one public key line, found {len(lines)}")
    parts = lines[0].split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES or not _B64.fullmatch(parts[1]):
        raise UserError(
            f"--key {path}: not an OpenSSH public key line (TYPE BASE64 [COMMENT]) without"
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


# --------------------------------------------------------------------------- file contents


def policy_text(
    files: Sequence[FilesRule],
    units: Sequence[str],
    containers: Sequence[str],
    *,
    state_dir: Path,
    audit_file: Path | None,
    header: str = "written by `logtorukun worker setup`; rerun it instead of editing",
) -> str:
    """The gate's policy file (format: gate/policy.py)."""

    def q(s: str) -> str:
        return json.dumps(s)  # printable-ASCII JSON strings are valid TOML strings

    out = [f"# {header}", "", "[limits]", f"state_dir = {q(str(state_dir))}", "", "[audit]"]
    if audit_file is None:
        out.append('destination = "syslog"')
    else:
        out += ['destination = "file"', f"path = {q(str(audit_file))}"]
    for rule in files:
        out += ["", "[[files]]", f"root = {q(rule.root)}",
                f"patterns = [{', '.join(q(p) for p in rule.patterns)}]"]  # fmt: skip
    for unit in units:
        out += ["", "[[journal]]", f"unit = {q(unit)}"]
    for c in containers:
        out += ["", "[[docker]]", f"container = {q(c)}"]
    return "\n".join(out) + "\n"


def key_line(key: str, command: str, sources: Sequence[str] | None) -> str:
    """`restrict,from="...",command="..." KEY`: the key can do nothing but run the gate."""
    opts = ["restrict"]
    if sources:
        opts.append(f'from="{",".join(sources)}"')
    if '"' in command or "\\" in command or "\n" in command:
        raise UserError(f"forced command {command!r} cannot be quoted safely")
    opts.append(f'command="{command}"')
    return f"{','.join(opts)} {key}"


def match_block(user: str, keys_file: Path, command: str) -> str:
    """The sshd drop-in for the gate user; each line is there for a reason (docs/security.md)."""
    keys_pattern = str(keys_file.parent / "%u")
    return f"""\
# written by `logtorukun worker setup`; `logtorukun worker remove` deletes it
Match User {user}
    # the key file lives under /etc, owned by root: the user cannot add keys
    AuthorizedKeysFile {keys_pattern}
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    # no port, agent, X11 or socket forwarding: ssh is not a tunnel into this network
    DisableForwarding yes
    PermitTunnel no
    PermitTTY no
    PermitUserRC no
    # the gate reads SSH_USER_AUTH to record which key (or certificate) connected
    ExposeAuthInfo yes
    # a second lock: even a key added without command= runs only the gate
    ForceCommand {command}
"""


def sudoers_text(user: str, containers: Sequence[str]) -> str:
    """The exact-argv rule of docs/gate.md: `docker logs` with the gate's option order only."""
    names = "|".join(re.escape(c) for c in containers)
    return (
        "# written by `logtorukun worker setup`: the gate may run `docker logs` for these\n"
        "# containers, with its options in the order gate/runner.py docker_argv builds them\n"
        f"{user} ALL=(root) NOPASSWD: /usr/bin/docker ^logs( --tail [0-9]+)?( --timestamps)?"
        "( --since [0-9A-Za-z:.+-]+)?( --until [0-9A-Za-z:.+-]+)?( --follow)? -- "
        f"({names})$\n"
    )


def logrotate_text(rule: FilesRule) -> str:
    globs = " ".join(f"{rule.root}/{p}" for p in rule.patterns if not p.endswith(".gz")
                     and not re.search(r"\.[0-9\[]", p))  # fmt: skip
    return f"""\
# written by `logtorukun worker setup`: rotate {rule.root} keeping the gate's read access.
# `create 0640` keeps group read, so the ACL grant (mask r--) survives the new file.
{globs or rule.root + "/*.log"} {{
    weekly
    rotate 8
    compress
    delaycompress
    missingok
    notifempty
    create 0640
}}
"""


# --------------------------------------------------------------------------- changes


@dataclass
class Change:
    """One difference between the machine and the spec: shown by --dry-run, then applied."""

    what: str
    apply: Callable[[], object]
    detail: str = ""


def _file_change(path: Path, text: str, mode: int, uid: int = 0, gid: int = 0) -> Change | None:
    data = text.encode()
    try:
        st = path.lstat()
        old = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        st, old = None, None
    if (old == data and st is not None and stat.S_IMODE(st.st_mode) == mode
            and (os.geteuid() != 0 or (st.st_uid, st.st_gid) == (uid, gid))):  # fmt: skip
        return None
    if old is None:
        detail = "".join(f"    + {ln}\n" for ln in text.splitlines())
        what = f"write {path} (mode {mode:04o})"
    elif old == data:
        detail, what = "", f"fix mode/owner of {path} to {mode:04o}"
    else:
        diff = difflib.unified_diff(old.decode(errors="replace").splitlines(),
                                    text.splitlines(), lineterm="", n=1)  # fmt: skip
        detail = "".join(f"    {ln}\n" for ln in list(diff)[2:])
        what = f"update {path}"

    def apply() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        system.write_atomic(path, data, mode, uid, gid)

    return Change(what, apply, detail)


def _bytes_change(path: Path, data: bytes, mode: int) -> Change | None:
    try:
        if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
            return None
    except FileNotFoundError:
        pass

    def apply() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        system.write_atomic(path, data, mode)

    return Change(f"install {path} ({len(data)} bytes, mode {mode:04o})", apply)


def _dir_change(path: Path, mode: int, owner: str | None = None) -> Change | None:
    """A directory with this mode, owned by root or by `owner` (who may not exist yet)."""
    try:
        st: os.stat_result | None = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path} exists and is not a directory: move it away")
    owner_exists = owner is None or system.user_exists(owner)
    want_uid = pwd.getpwnam(owner).pw_uid if owner and owner_exists else 0
    if (st is not None and owner_exists and stat.S_IMODE(st.st_mode) == mode
            and (os.geteuid() != 0 or st.st_uid == want_uid)):  # fmt: skip
        return None

    def apply() -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(owner) if owner else None
            os.chown(path, pw.pw_uid if pw else 0, pw.pw_gid if pw else 0)

    return Change(f"directory {path} (mode {mode:04o}, owner {owner or 'root'})", apply)


def _acl_entries(path: str) -> set[str]:
    """`getfacl` entries as `[default:]user:NAME:r-x`, effective-rights comments dropped."""
    out = system.run([system.GETFACL, "-cp", "--", path], ok=(0, 1))
    return {ln.split("#")[0].strip() for ln in out.stdout.splitlines() if ln.strip()}


def _acl_change(path: str, user: str, perms: str, default: bool = False) -> Change | None:
    """Grant `user` read (`r--`) or read+search (`r-x`) on `path` through an ACL entry."""
    entry = f"user:{user}:{perms}"
    key = f"default:{entry}" if default else entry
    if key in _acl_entries(path):
        return None
    argv = [system.SETFACL, *(["-d"] if default else []), "-m", entry, "--", path]
    label = "default ACL" if default else "ACL"
    return Change(f"{label} {entry} on {path}", functools.partial(system.run, argv))


def _matching_files(rule: FilesRule) -> list[Path]:
    from ..gate.policy import glob_regex

    rx = re.compile("|".join(f"(?:{glob_regex(p)})" for p in rule.patterns))
    root = Path(rule.root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rx.fullmatch(rel) and full.is_file() and not full.is_symlink():
                found.append(full)
    return found


def _logrotate_covers(layout: Layout, root: str) -> list[tuple[Path, str | None]]:
    """Existing logrotate stanzas mentioning `root`, with their `create` mode if any."""
    found: list[tuple[Path, str | None]] = []
    d = layout.logrotate_dir
    candidates = [layout.p("/etc/logrotate.conf"), *(sorted(d.iterdir()) if d.is_dir() else [])]
    ours = f"logtorukun-{layout.user}"
    for path in candidates:
        if path.name.startswith(ours) or not path.is_file():
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text()
            if root.rstrip("/") + "/" not in text:
                continue
            m = re.search(r"(?m)^\s*create\s+([0-7]{3,4})", text)
            found.append((path, m.group(1) if m else None))
    return found


def _logrotate_name(layout: Layout, root: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", root).strip("-") or "root"
    return layout.logrotate_dir / f"logtorukun-{layout.user}-{slug}"


# --------------------------------------------------------------------------- sshd


def _sshd_includes_dropins(layout: Layout) -> bool:
    try:
        text = layout.sshd_config.read_text()
    except FileNotFoundError:
        raise UserError(
            f"{layout.sshd_config} not found: install openssh-server (or point --root at an"
            " sshd config directory)"
        ) from None
    want = str(layout.sshd_dropin.parent)
    for m in re.finditer(r"(?mi)^\s*Include\s+(\S+)", text):
        inc = m.group(1)
        if inc.startswith(want + "/") or inc.startswith("sshd_config.d/"):
            return True
    return False


def sshd_test(layout: Layout) -> None:
    """`sshd -t -f CONFIG`: a config sshd would refuse is never reloaded."""
    out = system.run([system.SSHD, "-t", "-f", str(layout.sshd_config)], ok=(0, 1, 255))
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()
        raise UserError(f"sshd -t rejected the config: {why[-1] if why else 'no reason given'}")


def sshd_effective(layout: Layout, user: str, addr: str = "127.0.0.1") -> dict[str, str]:
    """`sshd -T -C user=...`: what sshd will really apply to the gate user."""
    out = system.run([system.SSHD, "-T", "-f", str(layout.sshd_config), "-C",
                      f"user={user},host=localhost,addr={addr}"], ok=(0, 1, 255))  # fmt: skip
    if out.returncode != 0:
        raise UserError(f"sshd -T failed: {out.stderr.strip().splitlines()[-1:]}")
    conf: dict[str, str] = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k.lower(), v)
    return conf


def sshd_reload(layout: Layout) -> str:
    """SIGHUP the running sshd named by the config's PidFile (what `systemctl reload ssh`
    does); return what happened, for the report."""
    pidfile = sshd_effective(layout, "root").get("pidfile", "/run/sshd.pid")
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return f"sshd is not running (no pid in {pidfile}); its next start uses the new config"
    if not system.alive(pid):
        return f"sshd is not running (stale {pidfile}); its next start uses the new config"
    os.kill(pid, signal.SIGHUP)
    return f"reloaded sshd (pid {pid}, SIGHUP)"


# --------------------------------------------------------------------------- setup/remove


def _manifest(layout: Layout) -> dict[str, object]:
    try:
        data = json.loads(layout.manifest.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plan_setup(spec: Spec) -> list[Change]:
    """Every change setup would make on this machine, in order; [] when all is done."""
    lay = spec.layout
    user = lay.user
    changes: list[Change | None] = []
    manifest = _manifest(lay)
    created_user = bool(manifest.get("created_user")) or not system.user_exists(user)

    need_user = not system.user_exists(user)
    if not need_user:
        pw = pwd.getpwnam(user)
        need_user = (
            pw.pw_shell != "/bin/sh"
            or pw.pw_dir != str(lay.home)
            or (system.shadow_password(user) or "!").startswith("!")
        )
    if need_user:
        changes.append(Change(
            f"system user {user} (home {lay.home}, shell /bin/sh, password '*': none matches)",
            lambda: system.ensure_system_user(user, lay.home),
        ))  # fmt: skip

    changes += [
        _dir_change(lay.home, 0o755),
        _dir_change(lay.state_dir, 0o700, owner=user),
    ]
    if spec.audit_file is not None:
        changes.append(_dir_change(spec.audit_file.parent, 0o750, owner=user))
    changes.append(_bytes_change(lay.zipapp, _zipapp_bytes(spec.python), 0o755))
    policy = policy_text(spec.files, spec.units, spec.containers,
                         state_dir=lay.state_dir, audit_file=spec.audit_file)  # fmt: skip
    changes.append(_file_change(lay.policy, policy, 0o644))
    command = gate_command(lay.zipapp, lay.policy, python=spec.python)
    changes.append(_dir_change(lay.keys_dir, 0o755))
    changes.append(_file_change(lay.authorized_keys,
                                "".join(key_line(k, command, spec.sources) + "\n"
                                        for k in spec.keys), 0o644))  # fmt: skip
    changes.append(_file_change(lay.sshd_dropin, match_block(user, lay.authorized_keys, command),
                                0o644))  # fmt: skip

    acls: list[list[str]] = []
    for rule in spec.files:
        root = Path(rule.root)
        if not root.is_dir():
            raise UserError(f"--files {rule.root}: no such directory on this worker")
        # Every directory above the root must be searchable, or the ACL below is useless.
        for parent in [*reversed(root.parents), root]:
            if str(parent) == "/":
                continue
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                changes.append(_acl_change(str(parent), user, "--x"))
                acls.append([str(parent), f"user:{user}:--x", ""])
        changes.append(_acl_change(rule.root, user, "r-x"))
        changes.append(_acl_change(rule.root, user, "r--", default=True))
        acls += [[rule.root, f"user:{user}:r-x", ""], [rule.root, f"user:{user}:r--", "default"]]
        for f in _matching_files(rule):
            changes.append(_acl_change(str(f), user, "r--"))
            acls.append([str(f), f"user:{user}:r--", ""])
        existing = _logrotate_covers(lay, rule.root)
        if not existing:
            changes.append(_file_change(_logrotate_name(lay, rule.root), logrotate_text(rule),
                                        0o644))  # fmt: skip
        for path, mode in existing:
            if mode is not None and not int(mode, 8) & 0o040:
                raise UserError(
                    f"{path}: `create {mode}` gives new logs no group read, which masks the"
                    f" ACL for {user} after each rotation; change it to `create 0640`"
                )

    if spec.containers:
        changes.append(_file_change(lay.sudoers, sudoers_text(user, spec.containers), 0o440))

    real = [c for c in changes if c is not None]
    new_manifest = {
        "user": user,
        "created_user": created_user,
        "acls": sorted(acls, key=lambda a: (len(a[0]), a)),
        "files": sorted(str(p) for p in _owned_files(spec)),
    }
    real_manifest = _file_change(lay.manifest, json.dumps(new_manifest, indent=1) + "\n", 0o600)
    if real_manifest is not None:
        real_manifest.detail = ""  # the undo list for `remove`: not worth a screenful
    if real and real_manifest is not None:
        real.insert(0, real_manifest)  # first: a crash midway still leaves the undo list
    return real


def _owned_files(spec: Spec) -> list[Path]:
    lay = spec.layout
    files = [lay.policy, lay.authorized_keys, lay.sshd_dropin, lay.manifest]
    files += [
        _logrotate_name(lay, r.root) for r in spec.files if not _logrotate_covers(lay, r.root)
    ]
    if spec.containers:
        files.append(lay.sudoers)
    return files


_ZIPAPP_CACHE: dict[str, bytes] = {}


def _zipapp_bytes(python: str) -> bytes:
    if python not in _ZIPAPP_CACHE:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            _ZIPAPP_CACHE[python] = build_gate_zipapp(Path(d) / "gate.pyz", python=python)\
                .read_bytes()  # fmt: skip
    return _ZIPAPP_CACHE[python]


def apply_changes(changes: Sequence[Change], layout: Layout, *, reload: bool,
                  say: Callable[[str], None]) -> None:  # fmt: skip
    """Apply in order; if sshd rejects the result, put the sshd drop-in back and stop."""
    dropin = layout.sshd_dropin
    before = dropin.read_bytes() if dropin.exists() else None
    touched_sshd = any(str(dropin) in c.what for c in changes)
    for c in changes:
        say(f"  {c.what}")
        c.apply()
    if touched_sshd:
        try:
            sshd_test(layout)
        except UserError:
            if before is None:
                dropin.unlink(missing_ok=True)
            else:
                system.write_atomic(dropin, before, 0o644)
            raise
        if reload:
            say(f"  {sshd_reload(layout)}")


def setup(spec: Spec, *, dry_run: bool, reload: bool, say: Callable[[str], None]) -> int:
    if not dry_run:
        system.need_root("logtorukun worker setup")
    system.need_program(system.SSHD, "openssh-server")
    if spec.files:
        system.need_program(system.SETFACL, "acl")
    if not _sshd_includes_dropins(spec.layout):
        raise UserError(
            f"{spec.layout.sshd_config} has no `Include {spec.layout.sshd_dropin.parent}/*.conf`:"
            " add it as the first line (Debian's default config has it)"
        )
    if spec.containers and not os.access(system.VISUDO, os.X_OK):
        say(f"note: {system.VISUDO} not found (apt-get install sudo): the sudoers rule for"
            " docker logs will be written but cannot be checked")  # fmt: skip
    changes = plan_setup(spec)
    if not changes:
        say(f"worker setup for {spec.layout.user}: nothing to change")
        return 0
    if dry_run:
        say(f"worker setup for {spec.layout.user} would make {len(changes)} change(s)"
            " (dry run: nothing was changed):")  # fmt: skip
        for c in changes:
            say(f"  {c.what}")
            if c.detail:
                say(c.detail.rstrip("\n"))
        return 0
    say(f"worker setup for {spec.layout.user}: {len(changes)} change(s)")
    apply_changes(changes, spec.layout, reload=reload, say=say)
    if spec.containers and os.access(system.VISUDO, os.X_OK):
        system.run([system.VISUDO, "-cf", str(spec.layout.sudoers)])
    say("done; check it from the web server with: logtorukun doctor")
    return 0


def plan_remove(layout: Layout, *, keep_user: bool) -> list[Change]:
    manifest = _manifest(layout)
    changes: list[Change] = []
    user = layout.user
    acls = manifest.get("acls", [])
    for entry in reversed(acls if isinstance(acls, list) else []):
        path, spec, kind = (str(x) for x in entry)
        if not os.path.lexists(path):
            continue
        key = f"default:{spec}" if kind else spec
        if key not in _acl_entries(path):
            continue
        name = spec.rsplit(":", 1)[0]  # user:NAME
        argv = [system.SETFACL, *(["-d"] if kind else []), "-x", name, "--", path]
        changes.append(Change(f"remove {'default ' if kind else ''}ACL {name} from {path}",
                              functools.partial(system.run, argv)))
    files = manifest.get("files")
    paths = [Path(p) for p in files] if isinstance(files, list) else [
        layout.policy, layout.authorized_keys, layout.sshd_dropin, layout.sudoers]  # fmt: skip
    for p in paths:
        if p != layout.manifest and p.exists():
            changes.append(Change(f"delete {p}", p.unlink))
    # The gate's audit records (audit_dir) stay: they are evidence, not configuration.
    for d in (layout.home,):
        if d.exists():
            changes.append(Change(f"delete {d} (gate state)",
                                  functools.partial(_rmtree, d)))
    created = manifest.get("created_user", True)
    if system.user_exists(user) and not keep_user and created:
        changes.append(Change(f"delete system user {user}",
                              lambda: system.run([system.USERDEL, user], ok=(0, 6))))
    others = [p for p in layout.keys_dir.glob("*") if p != layout.authorized_keys] \
        if layout.keys_dir.exists() else []  # fmt: skip
    if layout.zipapp.exists() and not others:
        changes.append(Change(f"delete {layout.zipapp} (no other gate user uses it)",
                              layout.zipapp.unlink))
    if layout.manifest.exists():
        changes.append(Change(f"delete {layout.manifest}", layout.manifest.unlink))
    return changes


def _rmtree(d: Path) -> None:
    import shutil

    shutil.rmtree(d)


def remove(layout: Layout, *, dry_run: bool, keep_user: bool, reload: bool,
           say: Callable[[str], None]) -> int:  # fmt: skip
    if not dry_run:
        system.need_root("logtorukun worker remove")
    changes = plan_remove(layout, keep_user=keep_user)
    if not changes:
        say(f"worker remove for {layout.user}: nothing to remove")
        return 0
    if dry_run:
        say(f"worker remove for {layout.user} would make {len(changes)} change(s)"
            " (dry run: nothing was changed):")  # fmt: skip
        for c in changes:
            say(f"  {c.what}")
        return 0
    say(f"worker remove for {layout.user}: {len(changes)} change(s)")
    touched_sshd = any(str(layout.sshd_dropin) in c.what for c in changes)
    for c in changes:
        say(f"  {c.what}")
        c.apply()
    if touched_sshd and layout.sshd_config.exists():
        sshd_test(layout)
        if reload:
            say(f"  {sshd_reload(layout)}")
    return 0


# --------------------------------------------------------------------------- CLI


def default_audit_file(layout: Layout) -> Path | None:
    """syslog when a syslog socket exists (journald or rsyslog); otherwise a file the
    gate user owns: a gate with nowhere to write its audit refuses everything."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat("/dev/log").st_mode) and layout.root == Path("/"):
            return None
    return layout.audit_dir / "gate.jsonl"


def _layout(args: argparse.Namespace) -> Layout:
    user = args.user
    if not _USER_NAME.fullmatch(user):
        raise UserError(f"--user {user!r}: lower-case letters, digits, '_' or '-'")
    if user == "root" or (system.user_exists(user) and pwd.getpwnam(user).pw_uid < 100):
        raise UserError(f"--user {user}: pick a dedicated user, not an existing system account")
    root = Path(args.root).resolve() if args.root else Path("/")
    return Layout(root, user)


def cmd_setup(args: argparse.Namespace) -> int:
    layout = _layout(args)
    if not (args.files or args.unit or args.container):
        raise UserError(
            "nothing to read: give --files ROOT:PATTERN, --unit UNIT or --container NAME"
        )
    for u in args.unit:
        if not re.fullmatch(UNIT_NAME, u):
            raise UserError(f"--unit {u!r} is not a systemd unit name")
    for c in args.container:
        if not re.fullmatch(CONTAINER_NAME, c):
            raise UserError(f"--container {c!r} is not a container name")
    audit: Path | None
    if args.audit_file and args.audit_file != "syslog" and not args.audit_file.startswith("/"):
        raise UserError(f"--audit-file {args.audit_file}: use an absolute path or 'syslog'")
    if args.audit_file == "syslog":
        audit = None
    elif args.audit_file:
        audit = Path(args.audit_file)
    else:
        audit = default_audit_file(layout)
    spec = Spec(
        layout=layout,
        keys=list(dict.fromkeys(read_key(k) for k in args.key)),
        sources=parse_from(args.from_),
        files=parse_files(args.files),
        units=list(dict.fromkeys(args.unit)),
        containers=list(dict.fromkeys(args.container)),
        python=args.python,
        audit_file=audit,
    )
    try:
        gate_command(layout.zipapp, layout.policy, python=spec.python)
    except ValueError as exc:
        raise UserError(f"{exc} (choose a --root without such characters)") from None
    if not os.access(spec.python, os.X_OK):
        raise UserError(
            f"--python {spec.python}: not executable here; the gate needs Python >= 3.11"
        )
    return setup(spec, dry_run=args.dry_run, reload=not args.no_reload, say=print)


def cmd_remove(args: argparse.Namespace) -> int:
    return remove(_layout(args), dry_run=args.dry_run, keep_user=args.keep_user,
                  reload=not args.no_reload, say=print)  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="set up or remove the gate on this worker (run as root)",
                       description="Provision this machine as a logtorukun worker.")  # fmt: skip
    wsub = p.add_subparsers(dest="worker_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--user", default=DEFAULT_USER, help="gate user (default: %(default)s)")
        q.add_argument("--root", metavar="DIR",
                       help="write every file below DIR instead of / (tests, chroots)")
        q.add_argument("--dry-run", action="store_true", help="print every change, change nothing")
        q.add_argument("--no-reload", action="store_true", help="do not signal sshd to reload")

    s = wsub.add_parser("setup", help="create the gate user, key, policy and sshd block",
                        description="Idempotent: a second run changes nothing.")  # fmt: skip
    common(s)
    s.add_argument("--key", required=True, action="append", metavar="PUBKEY_FILE",
                   help="the web server's public key (*.pub); twice while rotating keys")
    s.add_argument("--from", dest="from_", action="append", default=[], metavar="ADDR",
                   help="web server address or CIDR the key may connect from (repeatable)")
    s.add_argument("--files", action="append", default=[], metavar="ROOT:PATTERN",
                   help="log files the gate may read, e.g. /var/log/app:*.log (repeatable)")
    s.add_argument("--unit", action="append", default=[], metavar="UNIT",
                   help="systemd unit whose journal may be read (repeatable)")
    s.add_argument("--container", action="append", default=[], metavar="NAME",
                   help="docker container whose logs may be read (repeatable; adds a sudoers rule)")
    s.add_argument("--python", default=DEFAULT_PYTHON,
                   help="Python ≥ 3.11 that runs the gate (default: %(default)s)")
    s.add_argument("--audit-file", metavar="PATH",
                   help="gate audit as JSON lines in PATH, or 'syslog' (default: syslog when"
                        " /dev/log exists)")  # fmt: skip
    s.set_defaults(func=cmd_setup)

    r = wsub.add_parser("remove", help="undo `worker setup`")
    common(r)
    r.add_argument("--keep-user", action="store_true", help="leave the system user in place")
    r.set_defaults(func=cmd_remove)

