"""The worker's policy file: what this key may read, and the limits on every request.

A policy that is missing or invalid refuses everything (exit CONFIG) with one line
naming the file and the problem; there is no permissive fallback.
"""

from __future__ import annotations

import os

from .errors import Exit, GateError
from .globs import Glob, GlobError, compile_glob
from .record import field, record
from .vocabulary import is_container_name, is_unit_name

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_POLICY = "/etc/logtorukun/policy.toml"
MEMORY_UNIT = 32 << 20  # the least max_memory, each slot's own share of max_total_memory


@record(frozen=True)
class Limits:
    max_lines: int = 10_000
    max_bytes: int = 10_000_000
    max_seconds: float = 30.0
    follow_max_seconds: float = 3600.0
    max_concurrent: int = 8
    # Where the per-worker concurrency slots (lock files) live.
    state_dir: str = ""
    # Address-space limit (RLIMIT_AS) of every child the gate starts: grep, gzip,
    # journalctl, sudo/docker. A child that needs more fails, and the request ends at
    # the limit (exit 5) instead of the worker swapping.
    max_memory: int = 256 << 20
    # The same for all children of all requests together (slots.py shares it out):
    # max_concurrent x max_memory would otherwise be the bound.
    max_total_memory: int = 512 << 20
    # Bytes of answers a bridge session holds for a client that has not read them,
    # across all its streams; past it, streams wait (paused) instead of buffering.
    session_buffer: int = 8 << 20


@record(frozen=True)
class AuditSettings:
    destination: str = "syslog"  # or "file"
    path: str = ""
    socket: str = "/dev/log"


@record(frozen=True)
class Programs:
    """Absolute paths of the only programs the gate ever starts."""

    grep: str = "/usr/bin/grep"
    gzip: str = "/usr/bin/gzip"
    journalctl: str = "/usr/bin/journalctl"
    # Fixed arguments put right after journalctl, from `journalctl = [PROGRAM, ARGS...]`:
    # e.g. "--directory=/var/log/journal/remote" for a journal written by
    # systemd-journal-remote. Never from the client.
    journalctl_args: tuple[str, ...] = ()
    # Never the docker group (it is root): sudo with an exact sudoers rule, see docs/gate.md.
    docker: tuple[str, ...] = ("/usr/bin/sudo", "-n", "/usr/bin/docker")


@record(frozen=True)
class FileRule:
    root: str
    patterns: tuple[str, ...]
    allow_hardlinks: bool = False
    globs: tuple[Glob, ...] = field(default=(), compare=False, repr=False)

    def matches(self, rel: str) -> bool:
        return any(g.match(rel) for g in self.globs)


@record(frozen=True)
class Policy:
    path: str
    limits: Limits = field(default_factory=Limits)
    audit: AuditSettings = field(default_factory=AuditSettings)
    programs: Programs = field(default_factory=Programs)
    files: tuple[FileRule, ...] = ()
    units: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()

    def file_rule(self, path: str) -> tuple[FileRule, list[str]]:
        """The rule admitting `path` and its components below the root, or a refusal.

        The caller has already checked the path's syntax (absolute, ASCII, no `.`/`..`).
        """
        for rule in self.files:
            prefix = rule.root.rstrip("/") + "/"
            # Compare with the trailing separator: /var/log/app must not admit /var/log/app-x.
            if path.startswith(prefix):
                rel = path[len(prefix) :]
                if rel and rule.matches(rel):
                    return rule, rel.split("/")
        raise GateError(Exit.REFUSED, f"{path} is not allowed by the policy")


def policy_path(explicit: str | None) -> str:
    return explicit or os.environ.get("LOGTORUKUN_POLICY") or DEFAULT_POLICY


def load_policy(path: str) -> Policy:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _bad(path, "file not found") from None
    except PermissionError:
        raise _bad(path, "cannot be read by this user") from None
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    return parse_policy(_parsed_toml(path, raw), path)


def _parsed_toml(path: str, raw: bytes) -> dict[str, Any]:
    """The policy's TOML as a dict, from a private cache when the file is unchanged.

    `tomllib` costs ~6 ms of every gate start (it imports typing, datetime, string...).
    The cache holds the *parsed* TOML, keyed by path, size and CRC of the exact bytes
    just read, in the gate user's private state dir; validation still runs every time.
    """
    import marshal
    import zlib

    from .statedir import default_state_dir, private_dir

    key = (path, len(raw), zlib.crc32(raw))
    cache = os.path.join(default_state_dir(), "policy.cache")
    try:
        fd = os.open(cache, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid == os.getuid() and not st.st_mode & 0o022:
                cached_key, cached = marshal.loads(f.read())  # noqa: S302 (own 0600 file)
                if cached_key == key and isinstance(cached, dict):
                    return cached
    except (OSError, ValueError, EOFError, TypeError):
        pass
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, str(exc)) from None
    try:
        blob = marshal.dumps((key, data))  # ValueError for TOML dates: just don't cache
        private_dir(os.path.dirname(cache))
        tmp = f"{cache}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, cache)
    except (OSError, ValueError, GateError):
        pass
    return data


def _bad(path: str, problem: str) -> GateError:
    return GateError(Exit.CONFIG, f"policy {path}: {problem}; refusing every request")


def _table(data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _bad(path, f"[{key}] must be a table")
    return value


def _take(table: dict[str, Any], key: str, kind: type, default: Any, where: str, path: str) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad(path, f"{where}.{key} must be {kind.__name__}")
    return value


def _no_extra(table: dict[str, Any], known: set[str], where: str, path: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise _bad(path, f"unknown key {where}.{extra[0]}")


def parse_policy(data: dict[str, Any], path: str) -> Policy:
    _no_extra(data, {"limits", "audit", "programs", "files", "journal", "docker"}, "", path)
    lim = _table(data, "limits", path)
    d = Limits()
    limits = Limits(
        max_lines=_take(lim, "max_lines", int, d.max_lines, "limits", path),
        max_bytes=_take(lim, "max_bytes", int, d.max_bytes, "limits", path),
        max_seconds=_take(lim, "max_seconds", float, d.max_seconds, "limits", path),
        follow_max_seconds=_take(
            lim, "follow_max_seconds", float, d.follow_max_seconds, "limits", path
        ),
        max_concurrent=_take(lim, "max_concurrent", int, d.max_concurrent, "limits", path),
        max_memory=_take(lim, "max_memory", int, d.max_memory, "limits", path),
        max_total_memory=_take(lim, "max_total_memory", int, d.max_total_memory, "limits", path),
        session_buffer=_take(lim, "session_buffer", int, d.session_buffer, "limits", path),
        state_dir=_take(lim, "state_dir", str, "", "limits", path),
    )
    _no_extra(lim, set(Limits.__annotations__), "limits", path)
    for name in (
        "max_lines",
        "max_bytes",
        "max_seconds",
        "follow_max_seconds",
        "max_concurrent",
        "max_memory",
        "max_total_memory",
        "session_buffer",
    ):
        value = getattr(limits, name)
        # TOML has nan and inf: a deadline of now + nan never comes, int(inf) raises.
        if value != value or value in (float("inf"), float("-inf")):
            raise _bad(path, f"limits.{name} must be a finite number")
        if value <= 0:
            raise _bad(path, f"limits.{name} must be positive")
    if limits.max_memory < MEMORY_UNIT:
        raise _bad(path, "limits.max_memory is in bytes and must be at least 33554432 (32 MiB)")
    if limits.max_total_memory < limits.max_concurrent * MEMORY_UNIT:
        raise _bad(
            path,
            "limits.max_total_memory is in bytes and must be at least max_concurrent x 32 MiB"
            f" ({limits.max_concurrent * MEMORY_UNIT}): every slot needs 32 MiB for its children",
        )

    aud = _table(data, "audit", path)
    audit = AuditSettings(
        destination=_take(aud, "destination", str, "syslog", "audit", path),
        path=_take(aud, "path", str, "", "audit", path),
        socket=_take(aud, "socket", str, "/dev/log", "audit", path),
    )
    _no_extra(aud, {"destination", "path", "socket"}, "audit", path)
    if audit.destination not in ("syslog", "file"):
        raise _bad(path, 'audit.destination must be "syslog" or "file"')
    if audit.destination == "file" and not audit.path.startswith("/"):
        raise _bad(path, 'audit.destination = "file" needs an absolute audit.path')

    prog = _table(data, "programs", path)
    dp = Programs()
    docker = _take(prog, "docker", list, list(dp.docker), "programs", path)
    journal = prog.get("journalctl", dp.journalctl)
    journal = [journal] if isinstance(journal, str) else journal
    if (
        not isinstance(journal, list)
        or not journal
        or not all(isinstance(a, str) and a for a in journal)
        or not all(a.startswith("-") for a in journal[1:])
    ):
        raise _bad(
            path,
            "programs.journalctl must be a path, or [PATH, fixed options...] "
            '(e.g. ["/usr/bin/journalctl", "--directory=/var/log/journal/remote"])',
        )
    programs = Programs(
        grep=_take(prog, "grep", str, dp.grep, "programs", path),
        gzip=_take(prog, "gzip", str, dp.gzip, "programs", path),
        journalctl=journal[0],
        journalctl_args=tuple(journal[1:]),
        docker=tuple(docker),
    )
    _no_extra(prog, {"grep", "gzip", "journalctl", "docker"}, "programs", path)
    for exe in (programs.grep, programs.gzip, programs.journalctl, *programs.docker[:1]):
        if not exe.startswith("/"):
            raise _bad(path, f"programs: {exe!r} must be an absolute path")

    files: list[FileRule] = []
    raw_files = data.get("files", [])
    if not isinstance(raw_files, list):
        raise _bad(path, "write file rules as [[files]] tables")
    for i, raw in enumerate(raw_files):
        where = f"files[{i}]"
        if not isinstance(raw, dict):
            raise _bad(path, f"{where} must be a table")
        _no_extra(raw, {"root", "patterns", "allow_hardlinks"}, where, path)
        root = _take(raw, "root", str, "", where, path)
        if not root.startswith("/") or "/../" in f"{root}/" or "/./" in f"{root}/":
            raise _bad(path, f"{where}.root must be an absolute path without . or ..")
        patterns = _take(raw, "patterns", list, ["*.log"], where, path)
        if not patterns or not all(
            isinstance(p, str) and p and "/." not in f"/{p}" for p in patterns
        ):
            raise _bad(path, f"{where}.patterns must be non-empty globs without . or ..")
        if any(p.startswith("/") for p in patterns):
            raise _bad(path, f"{where}.patterns are relative to root; drop the leading /")
        try:
            globs = tuple(compile_glob(p) for p in patterns)
        except GlobError as exc:
            raise _bad(path, f"{where}.patterns: {exc}") from None
        files.append(
            FileRule(
                root=root.rstrip("/") or "/",
                patterns=tuple(patterns),
                allow_hardlinks=_take(raw, "allow_hardlinks", bool, False, where, path),
                globs=globs,
            )
        )

    units = _names(data, "journal", "unit", is_unit_name, path)
    containers = _names(data, "docker", "container", is_container_name, path)
    return Policy(path, limits, audit, programs, tuple(files), units, containers)


def _names(
    data: dict[str, Any], table: str, key: str, valid: Callable[[str], bool], path: str
) -> tuple[str, ...]:
    raw = data.get(table, [])
    if not isinstance(raw, list):
        raise _bad(path, f"write [[{table}]] tables")
    names: list[str] = []
    for i, entry in enumerate(raw):
        where = f"{table}[{i}]"
        if not isinstance(entry, dict):
            raise _bad(path, f"{where} must be a table")
        _no_extra(entry, {key}, where, path)
        name = _take(entry, key, str, "", where, path)
        if not valid(name):
            raise _bad(path, f"{where}.{key} {name!r} is not a valid name")
        names.append(name)
    return tuple(names)
