"""Who may read what: role grants from the config turned into one yes/no per request.

Default deny. A role grants (host globs or `label:X`) x (source globs) x capabilities,
and a request is allowed only when one single role grants all three for it: a user
with `tail` on web* and `follow` on db* may not follow on web1. Paths are normalised
and checked *before* matching, so `..`, `//` or a control character never reaches a
glob (the gate checks again on the worker; this layer must not depend on it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ..config import Config, HostConfig, RoleConfig
from ..gate.globs import Glob, compile_glob
from ..gate.vocabulary import CONTAINER_NAME, MAX_PATH, PATH_RULE, UNIT_NAME

# Capabilities a data request needs; "audit" is not tied to hosts.
TAIL, SEARCH, FOLLOW, DOWNLOAD, AUDIT = "tail", "search", "follow", "download", "audit"
READ_CAPS = frozenset({TAIL, SEARCH, FOLLOW, DOWNLOAD})

# The gate's own rules (gate/vocabulary.py): what passes here, the grammar accepts.
_UNIT = re.compile(UNIT_NAME)
_CONTAINER = re.compile(CONTAINER_NAME)
_PATH = re.compile(PATH_RULE)


class BadSource(ValueError):
    """The source is malformed (422), as opposed to well-formed but not granted (403)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One log source on a host: a file path, a systemd unit or a container."""

    kind: str  # "file" | "unit" | "container"
    name: str

    @property
    def key(self) -> str:
        """The form used in grants, audit records and URLs: a path, unit:X or container:X."""
        return self.name if self.kind == "file" else f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, key: str) -> Source:
        if key.startswith("unit:"):
            return source_from(unit=key[5:])
        if key.startswith("container:"):
            return source_from(container=key[10:])
        return source_from(path=key)


def source_from(
    path: str | None = None, unit: str | None = None, container: str | None = None
) -> Source:
    """Exactly one of path/unit/container, validated; raises BadSource with the reason."""
    given = [(k, v) for k, v in (("file", path), ("unit", unit), ("container", container)) if v]
    if len(given) != 1:
        raise BadSource("path, unit, container: give exactly one of them")
    kind, value = given[0]
    assert value is not None
    if kind == "file":
        return Source("file", check_path(value))
    if kind == "unit" and not _UNIT.fullmatch(value):
        raise BadSource(f"unit: {value!r} is not a unit name")
    if kind == "container" and not _CONTAINER.fullmatch(value):
        raise BadSource(f"container: {value!r} is not a container name")
    return Source(kind, value)


def check_path(path: str) -> str:
    """An absolute path without `.`/`..`/empty components or control characters."""
    if len(path) > MAX_PATH or not _PATH.fullmatch(path):
        raise BadSource(
            "path: must be absolute, printable ASCII without spaces, at most 1024 characters"
        )
    parts = path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise BadSource("path: must not contain '.', '..' or empty components")
    return path


@lru_cache(maxsize=512)
def role_glob(pattern: str) -> Glob:
    """The gate's own glob (one meaning for a pattern in roles and in worker policies);
    linear in the text matched, see gate/globs.py."""
    return compile_glob(pattern)


def host_matches(role: RoleConfig, host: HostConfig) -> bool:
    for pattern in role.hosts:
        if pattern.startswith("label:"):
            if pattern[6:] in host.labels:
                return True
        elif pattern == "*" or role_glob(pattern).match(host.name):
            return True
    return False


def source_matches(role: RoleConfig, source: Source) -> bool:
    key = source.key
    for pattern in role.sources:
        if pattern == "*":
            return True
        if source.kind == "file":
            if pattern.startswith("/") and role_glob(pattern).match(key):
                return True
        elif pattern.startswith(f"{source.kind}:") and role_glob(pattern).match(key):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


class Access:
    """The grants of one user's roles; build one per request (it is cheap)."""

    def __init__(self, config: Config, roles: Iterable[str]) -> None:
        self.config = config
        self.role_names = tuple(sorted(set(roles)))
        self.roles = [config.roles[r] for r in self.role_names if r in config.roles]

    @property
    def capabilities(self) -> frozenset[str]:
        caps: set[str] = set()
        for r in self.roles:
            caps |= r.capabilities
        return frozenset(caps)

    def can_audit(self) -> bool:
        return any(AUDIT in r.capabilities for r in self.roles)

    def hosts(self) -> list[HostConfig]:
        """Hosts where some role grants some read capability; the only ones a user sees."""
        return [h for h in self.config.hosts if self.host_caps(h)]

    def host_caps(self, host: HostConfig) -> frozenset[str]:
        caps: set[str] = set()
        for r in self.roles:
            if host_matches(r, host):
                caps |= r.capabilities & READ_CAPS
        return frozenset(caps)

    def source_caps(self, host: HostConfig, source: Source) -> frozenset[str]:
        caps: set[str] = set()
        for r in self.roles:
            if host_matches(r, host) and source_matches(r, source):
                caps |= r.capabilities & READ_CAPS
        return frozenset(caps)

    def check(self, host: HostConfig, source: Source | None, capability: str) -> Decision:
        """The one question every data request asks; the reason goes to the audit record."""
        if not self.roles:
            return Decision(False, "no role grants anything to this user")
        if source is None:
            if capability in self.host_caps(host):
                return Decision(True, f"{capability} on host {host.name}")
            return Decision(False, f"no role grants {capability} on host {host.name}")
        caps = self.source_caps(host, source)
        if capability in caps:
            return Decision(True, f"{capability} on {host.name}:{source.key}")
        if not caps:
            return Decision(False, f"no role grants {source.key} on host {host.name}")
        return Decision(
            False,
            f"no role grants {capability} on {host.name}:{source.key} (only "
            f"{', '.join(sorted(caps))})",
        )
