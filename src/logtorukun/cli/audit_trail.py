"""`logtorukun audit verify|export|tail|head`: the auditor's view of the store, from a shell.

They open the database read-only: an auditor needs no write access, and a wrong
`[server] database` path is an error instead of a new, empty (and "valid") store.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..audit.records import AuditRecord, AuditRef
from ..audit.store import AuditStore
from ..audit.times import parse_time
from ..audit.verify import parse_checkpoints
from ..config import load_config
from ..errors import UserError


def register(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        help="verify, export or read the audit trail",
        description="Read the web server's audit trail (the [server] database in --config).",
    )
    cmds = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    p = cmds.add_parser(
        "verify",
        help="check the hash chain: exit 1 and name each edited, deleted or reordered record",
        description=(
            "Walk the whole chain. Deleting the last records leaves a valid chain, so pass "
            "a head recorded earlier (or the last one your SIEM received) as --expect-head."
        ),
    )
    p.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="an anchor from `logtorukun audit head` or the SIEM copy; the store must contain it",
    )
    p.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="the JSON-lines or syslog copy holding the server's checkpoints (seq and hash "
        "every checkpoint_every records and at shutdown): the store must hold each one",
    )
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("export", help="write the records as JSON lines or CSV")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", dest="fmt")
    p.add_argument(
        "--since", metavar="TIME", help="ISO 8601 time (UTC unless it says) or an age: 2h, 7d"
    )
    p.add_argument(
        "--output", "-o", metavar="FILE", help="write here (mode 0600) instead of stdout"
    )
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("tail", help="show the last records, one line each")
    p.add_argument("-n", "--lines", type=_positive, default=20, metavar="N")
    p.set_defaults(func=cmd_tail)

    p = cmds.add_parser("head", help="print the last record's SEQ:HASH, to keep as an anchor")
    p.set_defaults(func=cmd_head)


def _positive(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[AuditStore]:
    store = AuditStore(load_config(args.config).server.store, readonly=True)
    try:
        yield store
    finally:
        store.close()


def cmd_verify(args: argparse.Namespace) -> int:
    anchor = None
    if args.expect_head:
        try:
            anchor = AuditRef.parse(args.expect_head)
        except ValueError as exc:
            raise UserError(f"--expect-head: {exc}") from None
    points: list[AuditRef] = []
    if args.checkpoints:
        try:
            with open(args.checkpoints, encoding="utf-8", errors="replace") as f:
                points = parse_checkpoints(f)
        except OSError as exc:
            raise UserError(f"--checkpoints: {args.checkpoints}: {exc.strerror}") from None
        if not points:
            raise UserError(
                f"--checkpoints: {args.checkpoints} holds no checkpoint or record "
                "(give the [server] audit_jsonl file, or the syslog file with audit lines)"
            )
    with _store(args) as store:
        report = store.verify(expect_head=anchor, checkpoints=points)
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(problem)
    if report.problem_count > len(report.problems):
        print(f"... and {report.problem_count - len(report.problems)} more")
    if points:
        print(f"checked against {report.checkpoints} checkpoint(s) from {args.checkpoints}")
    print(report.summary())
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = parse_time(args.since)
        except ValueError as exc:
            raise UserError(f"--since: {exc}") from None
    with _store(args) as store:
        if not args.output:
            try:
                store.export(args.fmt, sys.stdout, since=since)
                sys.stdout.flush()
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 1
            return 0
        with _open_output(args.output) as out:
            n = store.export(args.fmt, out, since=since)
    print(f"exported {n} records to {args.output}", file=sys.stderr)
    return 0


@contextmanager
def _open_output(name: str) -> Iterator[TextIO]:
    """0600: an export says who read what, which is for auditors' eyes only."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"--output {name}: cannot write it ({exc.strerror})") from None
    with open(fd, "w", encoding="utf-8", newline="") as out:
        yield out


def cmd_tail(args: argparse.Namespace) -> int:
    with _store(args) as store:
        records = store.query(limit=args.lines)
    for record in reversed(records):
        print(format_record(record))
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    with _store(args) as store:
        head = store.head()
    print(head if head else "empty")
    return 0


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _safe(text: object) -> str:
    """Control characters in a User-Agent or pattern must not drive the auditor's terminal."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def format_record(r: AuditRecord) -> str:
    """`ts #seq event decision user@client action host:source key=value... [-> #ref outcome]`."""
    parts = [r.ts, f"#{r.seq}", r.event]
    if r.decision:
        parts.append(r.decision)
    who = r.user or "-"
    if r.client:
        who += f"@{r.client}"
    parts.append(who)
    if r.action:
        parts.append(r.action)
    if r.host or r.source:
        parts.append(f"{r.host or '-'}:{r.source or '-'}" if r.source else (r.host or "-"))
    parts.extend(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in r.params.items())
    if r.reason:
        parts.append(f"reason={r.reason!r}")
    if r.ref is not None:
        parts.append(f"-> #{r.ref}")
    if r.outcome:
        parts.extend(f"{k}={v}" for k, v in r.outcome.items())
    return _safe(" ".join(parts))
