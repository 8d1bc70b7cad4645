"""Which configured hosts a name, a glob or a label means.

One place decides this so the CLI's `--hosts` and the web server's host pickers agree:
`web1` is one host, `web*` a glob over names, `label:prod` every host with that label.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

from .errors import UnknownHost
from .settings import Fleet, HostConfig


def host_by_name(hosts: Sequence[HostConfig] | Fleet, name: str) -> HostConfig:
    """The host called exactly `name`, or `UnknownHost` listing what exists."""
    for h in _hosts(hosts):
        if h.name == name:
            return h
    raise UnknownHost("", f"unknown host {name!r}{_hint(name, hosts)}")


def _hint(name: str, hosts: Sequence[HostConfig] | Fleet) -> str:
    """`; did you mean 'web1'?` for a near miss, else the configured names."""
    names = [h.name for h in _hosts(hosts)]
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}? (configured: {', '.join(names)})"
    return f" (configured: {', '.join(names) or 'none configured'})"


def matches(host: HostConfig, pattern: str) -> bool:
    """`label:X` matches by label, anything else is a glob over the host name."""
    if pattern.startswith("label:"):
        return pattern[len("label:") :] in host.labels
    return fnmatch.fnmatchcase(host.name, pattern)


def select_hosts(hosts: Sequence[HostConfig] | Fleet, patterns: Iterable[str]) -> list[HostConfig]:
    """Hosts matching any pattern, in config order; a pattern matching nothing is an error.

    Patterns may also be comma-separated (`web*,label:db`), as typed on a command line.
    """
    pats = [p.strip() for arg in patterns for p in arg.split(",") if p.strip()]
    if not pats:
        raise UnknownHost("", "no host pattern given")
    all_hosts = _hosts(hosts)
    for p in pats:
        if not any(matches(h, p) for h in all_hosts):
            raise UnknownHost("", f"no host matches {p!r}{_hint(p, all_hosts)}")
    return [h for h in all_hosts if any(matches(h, p) for p in pats)]


def _hosts(hosts: Sequence[HostConfig] | Fleet) -> Sequence[HostConfig]:
    return hosts if isinstance(hosts, Sequence) else hosts.hosts
