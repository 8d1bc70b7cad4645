"""Planning `worker setup` and `worker remove`: the ordered list of changes for this
machine, converged against the manifest of the previous run (worker_manifest).

Setup is a convergent plan: what the spec asks for is granted, what the previous run
granted and the spec no longer asks for is revoked (ACLs restored to their original,
files deleted, group membership dropped), and the manifest is written twice — first
the union of old and new (a crash midway still leaves everything to undo listed), last
exactly what now stands. Planning reads the machine but changes nothing, so `--dry-run`
is the plan printed.

To add a feature (for example certificate trust): put its inputs in `Spec`, append its
changes in `plan_setup`, record what `remove` must undo under its own key of
`Manifest.extra`, and undo it in `plan_remove`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from . import system, worker_account, worker_acl
from .bundle import GateBuild, gate_build, gate_command
from .gate_install import GateInstall, differences
from .worker_changes import Change, bytes_change, dir_change, file_change
from .worker_manifest import AclRecord, Manifest, load, load_path
from .worker_render import logrotate_text, policy_text, sudoers_text
from .worker_spec import FilesRule, Layout, Spec
from .worker_sshd import key_line, match_block, principal_line


def _matching_files(rule: FilesRule) -> list[Path]:
    from ..gate.globs import compile_glob

    globs = [compile_glob(p) for p in rule.patterns]
    root = Path(rule.root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if any(g.match(rel) for g in globs) and full.is_file() and not full.is_symlink():
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


def root_grants(user: str, rule: FilesRule) -> list[str]:
    """The log root's ACL: the gate may list it, and files created in it later are
    readable by the gate and by no one else the file's owner did not already allow.

    Without explicit `default:group::`/`default:other::` entries setfacl copies them from
    the directory's mode, and since a default ACL replaces the writer's umask, a file
    written with umask 077 would come out readable by everyone. The gate's default
    entry has `x` only when a pattern descends into subdirectories (new ones must be
    searchable); `default:user::rwx` keeps the owner's rights as the mode asks.
    """
    deep = any("/" in p or "**" in p for p in rule.patterns)
    return [
        f"user:{user}:r-x",
        "default:user::rwx",
        "default:group::---",
        "default:other::---",
        f"default:user:{user}:{'r-x' if deep else 'r--'}",
    ]


class _Planner:
    """Collects changes and the manifest they produce."""

    def __init__(self, layout: Layout, old: Manifest) -> None:
        self.lay = layout
        self.old = old
        self.new = Manifest(
            layout.user,
            uid=old.uid,
            created_user=old.created_user,
            adopted=old.adopted,
            dirs=list(old.dirs),  # created by setup until remove deletes them
            extra=copy.deepcopy(old.extra),
        )
        self.changes: list[Change] = []

    def add(self, change: Change | None) -> None:
        if change is not None:
            self.changes.append(change)

    def made_dirs(self, path: Path, *, itself: bool) -> None:
        """Record the directories that writing `path` creates (remove deletes them)."""
        chain = [path, *path.parents] if itself else list(path.parents)
        for d in reversed(chain):
            if not os.path.lexists(d) and str(d) not in self.new.dirs:
                self.new.dirs.append(str(d))

    def dir(self, path: Path, mode: int, owner: str | None = None) -> None:
        self.made_dirs(path, itself=True)
        self.add(dir_change(path, mode, owner=owner))

    def file(self, path: Path, text: str, mode: int) -> None:
        self.made_dirs(path, itself=False)
        self.new.files.append(str(path))
        self.add(file_change(path, text, mode))

    def grant(self, path: str, grants: list[str], undo: str = "restore") -> None:
        have = worker_acl.entries(path)
        missing = [g for g in grants if g not in have]
        old = self.old.acl.get(path)
        if missing:
            original = old.original if old else worker_acl.read_acl(path)
            self.new.acl[path] = AclRecord(original, grants, old.undo if old else undo)
            self.add(
                Change(
                    f"ACL {','.join(missing)} on {path}",
                    functools.partial(worker_acl.modify, path, missing),
                )
            )
        elif old is not None:
            self.new.acl[path] = AclRecord(old.original, grants, old.undo)


def plan_setup(spec: Spec) -> list[Change]:
    """Every change setup would make on this machine, in order; [] when all is done."""
    lay = spec.layout
    user = lay.user
    old = load(lay)
    plan = _Planner(lay, old)
    new = plan.new

    exists = system.user_exists(user)
    ours = old.created_user or old.adopted is not None
    worker_account.refuse_foreign(user, adopt=spec.adopt_user, ours=ours)
    if not exists:
        new.created_user = True
    elif not old.created_user and old.adopted is None:
        new.adopted = worker_account.account_state(user)
    if exists:
        new.uid = pwd.getpwnam(user).pw_uid
    need_user = not exists
    if exists:
        pw = pwd.getpwnam(user)
        need_user = (
            pw.pw_shell != "/bin/sh"
            or pw.pw_dir != str(lay.home)
            or (system.shadow_password(user) or "!").startswith("!")
        )
    if need_user:
        plan.add(
            Change(
                f"system user {user} (home {lay.home}, shell /bin/sh, password '*': none matches)",
                lambda: system.ensure_system_user(user, lay.home),
            )
        )

    plan.dir(lay.home, 0o755)
    plan.dir(lay.state_dir, 0o700, owner=user)
    if spec.audit_file is not None:
        _plan_audit(plan, spec.audit_file)
    _plan_gate(plan, lay, spec.python)
    policy = policy_text(
        spec.files, spec.units, spec.containers, state_dir=lay.state_dir, audit_file=spec.audit_file
    )
    plan.file(lay.policy, policy, 0o644)
    command = gate_command(lay.gate_entry, lay.policy, python=spec.python)
    plan.dir(lay.keys_dir, 0o755)
    # The sshd block before the key: setup checks sshd's effective settings right after
    # writing it, and a key is only installed behind a block that holds.
    ca = lay if spec.trust_ca else None
    plan.file(lay.sshd_dropin, match_block(user, lay.authorized_keys, command, ca=ca), 0o644)
    if spec.trust_ca:
        _plan_ca(plan, spec, command)
    plan.file(
        lay.authorized_keys,
        "".join(key_line(k, command, spec.sources) + "\n" for k in spec.keys),
        0o644,
    )

    _plan_acls(plan, spec)
    if spec.containers:
        plan.file(lay.sudoers, sudoers_text(user, spec.containers), 0o440)
    _plan_journal(plan, spec)
    new.files.append(str(lay.manifest))
    _plan_revocations(plan)

    if spec.audit_file is not None:
        new.audit_dir = str(spec.audit_file.parent)
    if not plan.changes and not _manifest_differs(lay, new):
        return []
    first = file_change(lay.manifest, _union(old, new).to_json(), 0o600)
    if first is not None:
        first.detail = ""  # the undo list for `remove`: not worth a screenful
        plan.changes.insert(0, first)  # first: a crash midway still leaves the undo list
    plan.changes.append(
        Change(f"record {lay.manifest} (what remove undoes)", _final_write(lay, new))
    )
    return plan.changes


def _plan_ca(plan: _Planner, spec: Spec, command: str) -> None:
    """`--trust-ca`: the CA key, the principals line, and a KRL that setup creates empty
    once and then leaves to the operator (`logtorukun ca revoke` + copying it here)."""
    lay = spec.layout
    assert spec.trust_ca is not None
    plan.file(lay.user_ca, spec.trust_ca + "\n", 0o644)
    plan.dir(lay.principals.parent, 0o755)
    plan.file(lay.principals, principal_line(lay.user, command, spec.sources) + "\n", 0o644)
    plan.made_dirs(lay.krl, itself=False)
    plan.new.files.append(str(lay.krl))
    if not lay.krl.exists():
        plan.add(bytes_change(lay.krl, _empty_krl(), 0o644))


@functools.cache
def _empty_krl() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="logtorukun-krl-") as d:
        path = Path(d) / "empty.krl"
        system.run([system.SSH_KEYGEN, "-q", "-k", "-f", str(path)])
        return path.read_bytes()


def _plan_audit(plan: _Planner, audit: Path) -> None:
    """The gate appends its audit to `audit`. A directory setup makes (the default one)
    is the gate user's; an existing one (`--audit-file /var/log/gate.jsonl`) is never
    chowned or chmodded: only the file itself is handed to the user."""
    d, user = audit.parent, plan.lay.user
    if d == plan.lay.audit_dir or str(d) in plan.old.dirs or not os.path.lexists(d):
        plan.dir(d, 0o750, owner=user)
        return
    if not d.is_dir() or d.is_symlink():
        raise UserError(f"--audit-file {audit}: {d} is not a directory")
    try:
        st: os.stat_result | None = audit.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"--audit-file {audit}: exists and is not a regular file")
    uid = pwd.getpwnam(user).pw_uid if system.user_exists(user) else None
    if st is not None and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o640:
        return

    def apply() -> None:
        pw = pwd.getpwnam(user)
        fd = os.open(audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
        try:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)

    plan.add(Change(f"audit file {audit} (owner {user}, mode 0640; {d} left as it is)", apply))


def _plan_acls(plan: _Planner, spec: Spec) -> None:
    user = plan.lay.user
    for rule in spec.files:
        root = Path(rule.root)
        if not root.is_dir():
            raise UserError(f"--files {rule.root}: no such directory on this worker")
        # Every directory above the root must be searchable, or the ACL below is useless.
        for parent in root.parents:
            if str(parent) != "/" and not os.stat(parent).st_mode & stat.S_IXOTH:
                plan.grant(str(parent), [f"user:{user}:--x"], undo="strip")
        plan.grant(rule.root, root_grants(user, rule))
        plan.new.acl_roots.append(rule.root)
        for f in _matching_files(rule):
            plan.grant(str(f), [f"user:{user}:r--"])
        existing = _logrotate_covers(plan.lay, rule.root)
        if not existing:
            plan.file(_logrotate_name(plan.lay, rule.root), logrotate_text(rule), 0o644)
        for path, mode in existing:
            if mode is not None and not int(mode, 8) & 0o040:
                raise UserError(
                    f"{path}: `create {mode}` gives new logs no group read, which masks the"
                    f" ACL for {user} after each rotation; change it to `create 0640`"
                )


def _plan_journal(plan: _Planner, spec: Spec) -> None:
    user = plan.lay.user
    if spec.units:
        group = worker_account.journal_group()
        if group in plan.old.groups or not worker_account.in_group(user, group):
            plan.new.groups.append(group)
        if not worker_account.in_group(user, group):
            plan.add(
                Change(
                    f"add {user} to group {group} (journal read access for --unit)",
                    functools.partial(worker_account.add_to_group, user, group),
                )
            )


def _plan_revocations(plan: _Planner) -> None:
    """Undo what the previous run granted and this one no longer asks for."""
    old, new, user = plan.old, plan.new, plan.lay.user
    for path, rec in sorted(old.acl.items(), key=lambda kv: -len(kv[0])):
        if path not in new.acl and os.path.lexists(path):
            plan.add(_undo_acl(path, rec, old, user))
    for root in old.acl_roots:
        if root not in new.acl_roots:
            plan.add(_strip_below(root, old, user))
    for f in old.files:
        if f not in new.files and os.path.lexists(f):
            plan.add(Change(f"delete {f} (no longer asked for)", Path(f).unlink))
    for group in old.groups:
        if group not in new.groups:
            plan.add(
                Change(
                    f"remove {user} from group {group} (no --unit any more)",
                    functools.partial(worker_account.drop_from_group, user, group),
                )
            )


def _undo_acl(path: str, rec: AclRecord, m: Manifest, user: str) -> Change:
    original = rec.original
    if original is not None and rec.undo == "restore":

        def apply() -> str | None:
            try:
                worker_acl.restore(path, original, keep=_others_grants(m, path))
            except UserError as exc:  # swapped for a symlink, or gone: one path, not all
                return str(exc)
            return None

        return Change(f"restore the original ACL, owner and mode of {path}", apply)
    return Change(f"strip {user}'s ACL entries from {path}", _stripper(path, m, user))


def _others_grants(m: Manifest, path: str) -> list[str]:
    """What other gate users' setups granted on `path`: a restore must not take it away."""
    keep: list[str] = []
    etc = Path(m.manifest_path).parent if m.manifest_path else None
    if etc is None or not etc.is_dir():
        return keep
    for other in sorted(etc.glob("worker-*.json")):
        if str(other) == m.manifest_path:
            continue
        rec = load_path(other).acl.get(path)
        if rec is not None:
            keep += [g for g in rec.grants if g not in keep]
    return keep


def _stripper(path: str, m: Manifest, user: str) -> Callable[[], str | None]:
    def apply() -> str | None:
        uid = _uid(m, user)
        try:
            if uid is not None:
                worker_acl.strip(path, uid)
        except UserError as exc:
            return str(exc)
        return None

    return apply


def _strip_below(root: str, m: Manifest, user: str) -> Change:
    """Files created below a granted root after setup inherited the gate's entry."""

    def apply() -> None:
        uid = _uid(m, user)
        if uid is None:
            return
        for path in worker_acl.walk(Path(root)):
            if path not in m.acl and worker_acl.carries(path, uid):
                with contextlib.suppress(UserError):  # vanished or swapped meanwhile
                    worker_acl.strip(path, uid)

    return Change(f"strip {user}'s ACL entries from files created below {root}", apply)


def _uid(m: Manifest, user: str) -> int | None:
    return pwd.getpwnam(user).pw_uid if system.user_exists(user) else m.uid


def _union(old: Manifest, new: Manifest) -> Manifest:
    u = copy.deepcopy(new)
    u.uid = new.uid if new.uid is not None else old.uid
    u.audit_dir = new.audit_dir or old.audit_dir
    u.dirs = list(dict.fromkeys([*old.dirs, *new.dirs]))
    u.files = list(dict.fromkeys([*old.files, *new.files]))
    u.groups = list(dict.fromkeys([*old.groups, *new.groups]))
    u.acl_roots = list(dict.fromkeys([*old.acl_roots, *new.acl_roots]))
    for path, rec in old.acl.items():
        u.acl.setdefault(path, rec)
    return u


def _manifest_differs(lay: Layout, m: Manifest) -> bool:
    try:
        return lay.manifest.read_text() != m.to_json()
    except FileNotFoundError:
        return True


def _final_write(lay: Layout, m: Manifest) -> Callable[[], None]:
    def apply() -> None:
        if m.uid is None and system.user_exists(m.user):
            m.uid = pwd.getpwnam(m.user).pw_uid
        system.write_atomic(lay.manifest, m.to_json().encode(), 0o600)

    return apply


_GATE_CACHE: dict[str, GateBuild] = {}


def _plan_gate(plan: _Planner, lay: Layout, python: str) -> None:
    """The gate's build for this Python (compiled by it) in its own directory, then the
    link switched to it in one step (ops/gate_install.py), then builds no running gate
    uses deleted; and the zipapp earlier versions installed (no forced command runs it
    any more)."""
    if python not in _GATE_CACHE:
        try:
            _GATE_CACHE[python] = gate_build(python)
        except RuntimeError as exc:
            raise UserError(f"{exc}; --python must be the worker's Python >= 3.11") from None
    build = _GATE_CACHE[python]
    inst = GateInstall(lay.gate_dir)
    plan.dir(inst.versions, 0o755)
    where = inst.build_dir(build.id)
    current = inst.target()
    if not inst.matches(build):
        plan.add(
            Change(
                f"install gate build {build.id} in {where} ({len(build.files)} files)",
                functools.partial(inst.write, build),
                _build_detail(inst, build, current),
            )
        )
    if current != build.id:
        target = f"{inst.versions.name}/{build.id}"
        if inst.is_plain_dir():
            what = (
                f"turn the directory {inst.link} into a link to {target}"
                " (exchanged in one step, then the old files deleted)"
            )
        else:
            was = f"; {inst.previous.name} -> {current}" if current else ""
            what = f"switch {inst.link} -> {target} (one rename{was})"
        plan.add(Change(what, functools.partial(inst.switch, build.id)))
    keep = {build.id, (current if current != build.id else inst.target(inst.previous)) or ""}
    for path in inst.stale(keep):
        plan.add(
            Change(
                f"delete {path} (an older gate build no running gate uses)",
                functools.partial(inst.discard, path),
            )
        )
    for path in inst.leftovers():
        plan.add(
            Change(
                f"delete {path} (left by a setup interrupted while switching the link)",
                functools.partial(inst.clear, path),
            )
        )
    if lay.old_zipapp.exists():
        old = lay.old_zipapp
        plan.add(Change(f"delete {old} (replaced by {lay.gate_dir})", old.unlink))


def _build_detail(inst: GateInstall, build: GateBuild, current: str | None) -> str:
    """For --dry-run: which sources differ from the running build (bytecode follows)."""
    if current is None and not inst.is_plain_dir():
        return ""
    base = inst.build_dir(current) if current else inst.link
    changed = [r for r in differences(base, build.files) if "__pycache__" not in r]
    if not changed:
        return "    (bytecode or modes only: another Python, or a repaired copy)\n"
    shown = "".join(f"    {r}\n" for r in changed[:20])
    more = f"    ... and {len(changed) - 20} more\n" if len(changed) > 20 else ""
    return f"    differs from {base}:\n{shown}{more}"


def plan_remove(layout: Layout, *, keep_user: bool) -> list[Change]:
    m = load(layout)
    user = layout.user
    changes: list[Change] = []
    # ACLs first, while the user still exists: restore what setup changed, strip what
    # files created since then inherited.
    for path, rec in sorted(m.acl.items(), key=lambda kv: -len(kv[0])):
        if os.path.lexists(path):
            changes.append(_undo_acl(path, rec, m, user))
    for root in m.acl_roots:
        if os.path.isdir(root):
            changes.append(_strip_below(root, m, user))
    files = m.files or [
        str(p) for p in (layout.policy, layout.authorized_keys, layout.sshd_dropin, layout.sudoers)
    ]
    for f in files:
        if Path(f) != layout.manifest and os.path.lexists(f):
            changes.append(Change(f"delete {f}", Path(f).unlink))
    if layout.home.exists() and (str(layout.home) in m.dirs or not m.exists):
        changes.append(
            Change(f"delete {layout.home} (gate state)", functools.partial(_rmtree, layout.home))
        )
    elif layout.state_dir.exists():
        changes.append(
            Change(
                f"delete {layout.state_dir} (gate state)",
                functools.partial(_rmtree, layout.state_dir),
            )
        )
    uid = _uid(m, user)
    if uid is not None:
        cache = Path(f"/tmp/logtorukun-gate-{uid}")  # noqa: S108 (the gate's default state dir)
        if _owned_dir(cache, uid):
            changes.append(
                Change(
                    f"delete {cache} (the gate's policy cache)", functools.partial(_rmtree, cache)
                )
            )
    changes += _plan_audit_kept(m, uid)
    for group in m.groups:
        changes.append(
            Change(
                f"remove {user} from group {group}",
                functools.partial(worker_account.drop_from_group, user, group),
            )
        )
    if system.user_exists(user):
        if m.adopted is not None:
            changes.append(
                Change(
                    f"give {user} back its shell {m.adopted['shell']}, home {m.adopted['home']}"
                    " and password field",
                    functools.partial(worker_account.restore_account, user, m.adopted),
                )
            )
        elif not keep_user and (m.created_user or not m.exists):
            changes.append(
                Change(
                    f"delete system user {user}",
                    lambda: system.run([system.USERDEL, user], ok=(0, 6)),
                )
            )
    others = (
        [p for p in layout.keys_dir.glob("*") if p != layout.authorized_keys]
        if layout.keys_dir.exists()
        else []
    )
    inst = GateInstall(layout.gate_dir)
    if not others and any(os.path.lexists(p) for p in (inst.link, inst.previous, inst.versions)):
        changes.append(
            Change(
                f"delete {inst.link}, {inst.previous.name} and {inst.versions} (the gate;"
                " no other gate user uses it)",
                inst.remove,
            )
        )
    if layout.old_zipapp.exists() and not others:
        changes.append(Change(f"delete {layout.old_zipapp}", layout.old_zipapp.unlink))
    if layout.manifest.exists():
        changes.append(Change(f"delete {layout.manifest}", layout.manifest.unlink))
    for d in sorted(m.dirs, key=lambda d: -d.count("/")):  # deepest first
        if os.path.isdir(d) and not os.path.islink(d):
            changes.append(
                Change(f"delete {d} if empty (setup created it)", functools.partial(_rmdir, d))
            )
    return changes


def _plan_audit_kept(m: Manifest, uid: int | None) -> list[Change]:
    """The gate's audit records stay (evidence, not configuration), owned by root so a
    later account that reuses the uid does not own them."""
    if m.audit_dir is None or uid is None or not os.path.isdir(m.audit_dir):
        return []
    d = Path(m.audit_dir)
    if d.is_symlink():
        return []
    owned = [p for p in [d, *d.iterdir()] if p.lstat().st_uid == uid]
    if not owned:
        return []

    def apply() -> None:
        for p in owned:
            os.lchown(p, 0, 0)

    return [Change(f"keep {d} (the gate's audit records), owned by root", apply)]


def _owned_dir(path: Path, uid: int) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid


def _rmdir(d: str) -> None:
    with contextlib.suppress(OSError):  # not empty: someone else's files are in it
        os.rmdir(d)


def _rmtree(d: Path) -> None:
    shutil.rmtree(d)
