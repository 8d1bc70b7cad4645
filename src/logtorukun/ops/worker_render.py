"""The text of the files `worker setup` writes for the gate besides sshd's: the policy,
the sudoers rule for containers and the logrotate stanza.

Pure functions of the spec, so `--dry-run` can show exactly what would be written and
`logtorukun demo` can reuse them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from .worker_spec import FilesRule


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
        out += [
            "",
            "[[files]]",
            f"root = {q(rule.root)}",
            f"patterns = [{', '.join(q(p) for p in rule.patterns)}]",
        ]
    for unit in units:
        out += ["", "[[journal]]", f"unit = {q(unit)}"]
    for c in containers:
        out += ["", "[[docker]]", f"container = {q(c)}"]
    return "\n".join(out) + "\n"


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
    globs = " ".join(
        f"{rule.root}/{p}"
        for p in rule.patterns
        if not p.endswith(".gz") and not re.search(r"\.[0-9\[]", p)
    )
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
