"""Planning `worker setup` and `worker remove`: the ordered list of changes for this
machine, and the manifest that records what setup did so remove can undo exactly that.

Planning reads the machine but changes nothing, so `--dry-run` is the plan printed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import re
import stat
from pathlib import Path

from ..errors import UserError
from . import system
from .bundle import build_gate_zipapp, gate_command
from .worker_changes import Change, acl_change, acl_entries, bytes_change, dir_change, file_change
from .worker_render import logrotate_text, policy_text, sudoers_text
from .worker_spec import FilesRule, Layout, Spec
from .worker_sshd import key_line, match_block


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
        changes.append(
            Change(
                f"system user {user} (home {lay.home}, shell /bin/sh, password '*': none matches)",
                lambda: system.ensure_system_user(user, lay.home),
            )
        )

    changes += [
        dir_change(lay.home, 0o755),
        dir_change(lay.state_dir, 0o700, owner=user),
    ]
    if spec.audit_file is not None:
        changes.append(dir_change(spec.audit_file.parent, 0o750, owner=user))
    changes.append(bytes_change(lay.zipapp, _zipapp_bytes(spec.python), 0o755))
    policy = policy_text(
        spec.files, spec.units, spec.containers, state_dir=lay.state_dir, audit_file=spec.audit_file
    )
    changes.append(file_change(lay.policy, policy, 0o644))
    command = gate_command(lay.zipapp, lay.policy, python=spec.python)
    changes.append(dir_change(lay.keys_dir, 0o755))
    changes.append(
        file_change(
            lay.authorized_keys,
            "".join(key_line(k, command, spec.sources) + "\n" for k in spec.keys),
            0o644,
        )
    )
    changes.append(
        file_change(lay.sshd_dropin, match_block(user, lay.authorized_keys, command), 0o644)
    )

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
                changes.append(acl_change(str(parent), user, "--x"))
                acls.append([str(parent), f"user:{user}:--x", ""])
        changes.append(acl_change(rule.root, user, "r-x"))
        changes.append(acl_change(rule.root, user, "r--", default=True))
        acls += [[rule.root, f"user:{user}:r-x", ""], [rule.root, f"user:{user}:r--", "default"]]
        for f in _matching_files(rule):
            changes.append(acl_change(str(f), user, "r--"))
            acls.append([str(f), f"user:{user}:r--", ""])
        existing = _logrotate_covers(lay, rule.root)
        if not existing:
            changes.append(
                file_change(_logrotate_name(lay, rule.root), logrotate_text(rule), 0o644)
            )
        for path, mode in existing:
            if mode is not None and not int(mode, 8) & 0o040:
                raise UserError(
                    f"{path}: `create {mode}` gives new logs no group read, which masks the"
                    f" ACL for {user} after each rotation; change it to `create 0640`"
                )

    if spec.containers:
        changes.append(file_change(lay.sudoers, sudoers_text(user, spec.containers), 0o440))

    real = [c for c in changes if c is not None]
    new_manifest = {
        "user": user,
        "created_user": created_user,
        "acls": sorted(acls, key=lambda a: (len(a[0]), a)),
        "files": sorted(str(p) for p in _owned_files(spec)),
    }
    real_manifest = file_change(lay.manifest, json.dumps(new_manifest, indent=1) + "\n", 0o600)
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
            _ZIPAPP_CACHE[python] = build_gate_zipapp(
                Path(d) / "gate.pyz", python=python
            ).read_bytes()
    return _ZIPAPP_CACHE[python]


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
        if key not in acl_entries(path):
            continue
        name = spec.rsplit(":", 1)[0]  # user:NAME
        argv = [system.SETFACL, *(["-d"] if kind else []), "-x", name, "--", path]
        changes.append(
            Change(
                f"remove {'default ' if kind else ''}ACL {name} from {path}",
                functools.partial(system.run, argv),
            )
        )
    files = manifest.get("files")
    paths = (
        [Path(p) for p in files]
        if isinstance(files, list)
        else [layout.policy, layout.authorized_keys, layout.sshd_dropin, layout.sudoers]
    )
    for p in paths:
        if p != layout.manifest and p.exists():
            changes.append(Change(f"delete {p}", p.unlink))
    # The gate's audit records (audit_dir) stay: they are evidence, not configuration.
    for d in (layout.home,):
        if d.exists():
            changes.append(Change(f"delete {d} (gate state)", functools.partial(_rmtree, d)))
    created = manifest.get("created_user", True)
    if system.user_exists(user) and not keep_user and created:
        changes.append(
            Change(
                f"delete system user {user}", lambda: system.run([system.USERDEL, user], ok=(0, 6))
            )
        )
    others = (
        [p for p in layout.keys_dir.glob("*") if p != layout.authorized_keys]
        if layout.keys_dir.exists()
        else []
    )
    if layout.zipapp.exists() and not others:
        changes.append(
            Change(f"delete {layout.zipapp} (no other gate user uses it)", layout.zipapp.unlink)
        )
    if layout.manifest.exists():
        changes.append(Change(f"delete {layout.manifest}", layout.manifest.unlink))
    return changes


def _rmtree(d: Path) -> None:
    import shutil

    shutil.rmtree(d)
