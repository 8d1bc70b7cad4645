"""The manifest: what `worker setup` changed on this machine, so `remove` (and the next
`setup`) can undo exactly that and nothing else.

Stored as JSON in `/etc/logtorukun/worker-<user>.json` (mode 0600). Format version 2:

    version       2
    user, uid     the gate user (uid kept so entries survive the user's deletion)
    created_user  setup created the account (remove deletes it)
    adopted       {"shell", "home", "password"} of an account taken over with
                  --adopt-user (remove puts them back), else null
    groups        supplementary groups setup added the user to (systemd-journal)
    dirs          directories setup created, parents first (remove deletes them if empty)
    files         files setup wrote (remove deletes them)
    acl           {path: {"original": getfacl text before setup, "grants": [entries],
                  "undo": "restore" (the original) | "strip" (only the gate's entries)}}
    acl_roots     directories carrying setup's default ACL: files created below them
                  later inherit the gate's entry, and remove strips it
    audit_dir     the gate's audit directory (kept by remove, handed to root)
    extra         sections of later features, kept as they are (see `extra`)

A feature that adds state (say certificate trust) stores it under its own key of
`extra` and plans its own changes; `plan_setup` carries unknown keys over untouched.
Version 1 manifests (a flat `acls` list, no originals) are read as grants whose
original is unknown: remove then strips the gate user's entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .worker_spec import Layout

VERSION = 2


@dataclass
class AclRecord:
    original: str | None  # getfacl -pn text before setup touched the path
    grants: list[str]  # entries setup wants there, e.g. "user:NAME:r--"
    # "restore" the original, or "strip" the gate's entries: for directories above a log
    # root, which other gate users and admins share (a snapshot would undo their changes)
    undo: str = "restore"


@dataclass
class Manifest:
    user: str
    uid: int | None = None
    created_user: bool = False
    adopted: dict[str, str] | None = None
    groups: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    acl: dict[str, AclRecord] = field(default_factory=dict)
    acl_roots: list[str] = field(default_factory=list)
    audit_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    exists: bool = False  # read from disk (not part of the JSON)
    manifest_path: str = ""  # where it was read from (not part of the JSON)

    def to_json(self) -> str:
        data = {
            "version": VERSION,
            "user": self.user,
            "uid": self.uid,
            "created_user": self.created_user,
            "adopted": self.adopted,
            "groups": self.groups,
            "dirs": self.dirs,
            "files": sorted(self.files),
            "acl": {
                p: {"original": r.original, "grants": r.grants, "undo": r.undo}
                for p, r in sorted(self.acl.items())
            },
            "acl_roots": sorted(self.acl_roots),
            "audit_dir": self.audit_dir,
            "extra": self.extra,
        }
        return json.dumps(data, indent=1) + "\n"


def load(layout: Layout) -> Manifest:
    """The manifest on disk, or an empty one (exists=False)."""
    m = load_path(layout.manifest)
    m.user = layout.user
    return m


def load_path(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        return Manifest("", manifest_path=str(path))
    m = Manifest(str(data.get("user", "")), exists=True, manifest_path=str(path))
    m.uid = data.get("uid") if isinstance(data.get("uid"), int) else None
    m.created_user = bool(data.get("created_user", data.get("version") is None))
    adopted = data.get("adopted")
    m.adopted = {str(k): str(v) for k, v in adopted.items()} if isinstance(adopted, dict) else None
    m.groups = [str(g) for g in data.get("groups", [])]
    m.dirs = [str(d) for d in data.get("dirs", [])]
    m.files = [str(f) for f in data.get("files", [])]
    m.acl_roots = [str(r) for r in data.get("acl_roots", [])]
    audit = data.get("audit_dir")
    m.audit_dir = audit if isinstance(audit, str) else None
    extra = data.get("extra")
    m.extra = extra if isinstance(extra, dict) else {}
    acl = data.get("acl")
    if isinstance(acl, dict):
        for target, rec in acl.items():
            if isinstance(rec, dict):
                orig = rec.get("original")
                grants = [str(g) for g in rec.get("grants", [])]
                undo = "strip" if rec.get("undo") == "strip" else "restore"
                m.acl[str(target)] = AclRecord(
                    orig if isinstance(orig, str) else None, grants, undo
                )
    for entry in data.get("acls", []) if isinstance(data.get("acls"), list) else []:
        target, spec, kind = (str(x) for x in entry)  # version 1
        rec1 = m.acl.setdefault(target, AclRecord(None, []))
        rec1.grants.append(f"default:{spec}" if kind else spec)
    return m
