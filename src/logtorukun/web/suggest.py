"""What the search page suggests: the sources a user may read on the chosen hosts.

`GET /api/search/sources?hosts=GLOBS` answers from the user's roles (their path globs)
and from the gate's `sources` listing of at most `MAX_LISTED_HOSTS` of the chosen hosts,
each filtered by the same grants every read is checked against: a user never sees a
file, unit or container name they may not read. A listing is kept `LISTING_TTL` seconds
per (host, user), so typing in the Hosts field does not ask the workers again and again;
a host that failed is asked again after `FAILED_TTL`. Every request is audited, and the
worker's own record of a listing names the user and this request's audit seq.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ..config import HostConfig
from ..gate.globs import GlobError, check_user_glob
from .access import READ_CAPS, SEARCH, BadSource, Source, host_matches, source_from
from .api import searchable_hosts
from .context import Ctx, Server
from .guard import server_of
from .workers import WorkerError

router = APIRouter(prefix="/api", tags=["api"])

LISTING_TTL = 30.0  # seconds a host's listing is reused for the same user
FAILED_TTL = 5.0  # ... and a failure (an unreachable host is asked again soon)
MAX_CACHED = 1024  # (host, user) listings kept; the oldest go first
MAX_LISTED_HOSTS = 8  # hosts whose workers are asked per request; the rest: role globs only
PREFERRED = "/var/log/**/*.log"  # the default when it matches something
MAX_DIR_GLOBS = 20  # directory globs offered (the fullest directories)


class Listings:
    """The gate's `sources` per (host, user), reused for a few seconds (bounded LRU)."""

    def __init__(self, ttl: float = LISTING_TTL, size: int = MAX_CACHED) -> None:
        self.ttl, self.size = ttl, size
        self._kept: OrderedDict[tuple[str, str], tuple[float, dict[str, Any] | WorkerError]] = (
            OrderedDict()
        )

    async def get(
        self, server: Server, host: HostConfig, user: str, via: dict[str, Any]
    ) -> tuple[dict[str, Any] | WorkerError, bool]:
        """(the listing or the failure, whether it came from the cache)."""
        key = (host.name, user)
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None:
            at, value = kept
            ttl = FAILED_TTL if isinstance(value, WorkerError) else self.ttl
            if now - at < ttl:
                self._kept.move_to_end(key)
                return value, True
        try:
            fresh: dict[str, Any] | WorkerError = await server.workers.sources(host, via)
        except WorkerError as exc:
            fresh = exc
        self._kept[key] = (time.monotonic(), fresh)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return fresh, False


def listings_of(server: Server) -> Listings:
    if server.listings is None:
        server.listings = Listings()
    listings: Listings = server.listings
    return listings


def _readable(ctx: Ctx, host: HostConfig, doc: dict[str, Any]) -> list[tuple[Source, bool]]:
    """(source, searchable) for every listed source some role lets this user read."""
    assert ctx.access is not None
    out: list[tuple[Source, bool]] = []
    named = [("file", f.get("path")) for f in doc.get("files", []) if isinstance(f, dict)]
    named += [("unit", u) for u in doc.get("units", [])]
    named += [("container", c) for c in doc.get("containers", [])]
    for kind, name in named:
        if not isinstance(name, str):
            continue
        try:
            src = source_from(**{"path" if kind == "file" else kind: name})
        except BadSource:
            continue
        caps = ctx.access.source_caps(host, src) & READ_CAPS
        if caps:
            out.append((src, SEARCH in caps))
    return out


def _role_globs(ctx: Ctx, hosts: list[HostConfig]) -> list[str]:
    """Path globs of the roles that grant search on one of the hosts (`*` is no hint)."""
    assert ctx.access is not None
    found: list[str] = []
    for role in ctx.access.roles:
        if SEARCH not in role.capabilities or not any(host_matches(role, h) for h in hosts):
            continue
        for pattern in role.sources:
            if pattern.startswith("/") and pattern not in found:
                found.append(pattern)
    return found


def _dir_globs(files: list[str]) -> list[str]:
    """`DIR/*.log` for each directory with `.log` files, fullest first, then `DIR/*` where
    there are other files too (rotated `.1`, `.gz`); at most MAX_DIR_GLOBS (each is
    matched against every listed file)."""
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(posixpath.dirname(f), []).append(posixpath.basename(f))
    out: list[tuple[bool, int, str]] = []
    for d, names in by_dir.items():
        logs = sum(1 for n in names if n.endswith(".log"))
        if logs:
            out.append((False, -logs, f"{d.rstrip('/')}/*.log"))
        if logs < len(names):
            out.append((True, -len(names), f"{d.rstrip('/')}/*"))
    return [g for *_, g in sorted(out)][:MAX_DIR_GLOBS]


def default_glob(candidates: list[str], files: list[str]) -> str | None:
    """The first of PREFERRED and `candidates` that matches one of `files` (the files
    the user may search), else the first file: never a glob that finds nothing."""
    tried = [PREFERRED, *candidates]
    return next((g for g in tried if _matching(g, files)), files[0] if files else None)


def _matching(glob: str, files: list[str]) -> int:
    try:
        g = check_user_glob(glob, "path")
    except GlobError:
        return 0
    return sum(1 for f in files if g.match(f))


@router.get("/search/sources", summary="sources you may read on the hosts a search would cover")
async def search_sources(
    request: Request,
    hosts: Annotated[
        str, Query(max_length=512, description="host globs or label:X, comma-separated")
    ] = "*",
) -> dict[str, Any]:
    """`globs` (with how many listed files each matches) and `files` fill the search's
    Files field; `units` and `containers` are for the viewer (the cross-host search
    reads files); `failed` names hosts whose listing failed, with the reason;
    `default` is a glob that matches at least one file you may search, or null."""
    server = server_of(request)
    params = {"hosts": hosts}
    ctx = server.require_user(request, "search_sources", host=hosts, params=params)
    selected = searchable_hosts(server, ctx, hosts, action="search_sources", params=params)
    listed = selected[:MAX_LISTED_HOSTS]
    ref = server.record(
        ctx,
        "read",
        action="search_sources",
        host=hosts,
        params={**params, "listed": [h.name for h in listed]},
        decision="allow",
        reason="listing filtered by grants",
    )
    started = time.monotonic()
    assert ctx.name is not None
    cache = listings_of(server)
    got = await asyncio.gather(
        *(cache.get(server, h, ctx.name, {"user": ctx.name, "audit": ref.seq}) for h in listed)
    )
    # Filtering up to 8 x 2000 listed files and matching the globs: off the event loop.
    answer = await asyncio.to_thread(_answer, ctx, selected, listed, [doc for doc, _ in got])
    server.finish(
        ref,
        "read_end",
        {
            "files": len(answer["files"]),
            "other": len(answer["units"]) + len(answer["containers"]),
            "failed": len(answer["failed"]),
            "cached": [h.name for h, (_, hit) in zip(listed, got, strict=True) if hit],
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
        },
    )
    return answer


def _answer(
    ctx: Ctx,
    selected: list[HostConfig],
    listed: list[HostConfig],
    docs: list[dict[str, Any] | WorkerError],
) -> dict[str, Any]:
    """The response: the listings filtered by the user's grants, globs, the default."""
    files: dict[str, list[str]] = {}
    searchable: set[str] = set()
    others: dict[str, list[str]] = {}  # unit:X / container:X -> hosts
    failed = []
    for h, doc in zip(listed, docs, strict=True):
        if isinstance(doc, WorkerError):
            failed.append({"host": h.name, "status": doc.status, "reason": doc.reason})
            continue
        for src, can_search in _readable(ctx, h, doc):
            if src.kind == "file":
                files.setdefault(src.key, []).append(h.name)
                if can_search:
                    searchable.add(src.key)
            else:
                others.setdefault(src.key, []).append(h.name)
    found = sorted(searchable)
    candidates = list(dict.fromkeys([*_role_globs(ctx, selected), *_dir_globs(found)]))
    kept = sorted(others.items())
    return {
        "hosts": [h.name for h in selected],
        "listed": [h.name for h in listed],
        "globs": [{"glob": g, "files": _matching(g, found)} for g in candidates],
        "files": [
            {"path": p, "hosts": hs, "search": p in searchable} for p, hs in sorted(files.items())
        ],
        "units": [{"name": k[5:], "hosts": hs} for k, hs in kept if k.startswith("unit:")],
        "containers": [
            {"name": k[10:], "hosts": hs} for k, hs in kept if k.startswith("container:")
        ],
        "failed": failed,
        "default": default_glob(candidates, found),
    }
