"""`logtorukun worker setup|remove`: Phase 0/1 of docs/roadmap.md on a worker, in one command.

Everything docs/security.md asks a worker to have is written from flags, shown before it is
done (`--dry-run`), done only where the machine differs (a second run changes
nothing), converged against the previous run (grants no longer asked for are revoked),
and undone exactly by `remove`:

- a dedicated system user with no password and `/bin/sh` (sshd runs the forced
  command through the login shell; the command string holds only checked paths); an
  existing account only with `--adopt-user`, given back as it was by `remove`;
- the gate (one directory of sources and bytecode per build, behind a root-owned link
  switched in one step: `gate_install`) and a policy file written from
  `--files/--unit/--container`;
- the web server's key in a root-owned authorized_keys file, as
  `restrict,from="ADDR",command="<gate> --policy <file>" KEY`;
- an sshd `Match User` drop-in: key only, no forwarding, no TTY, no ~/.ssh/rc, auth
  info exposed to the gate, `ForceCommand` as a second lock behind `command=`, and
  bounds on dead, idle and crowded connections; then `sshd -t`, and sshd's effective
  settings for the gate user (`sshd -T -C`) must be at least as strict, or setup names
  the file that overrides the block and stops before installing the key;
- read access to the log files through POSIX ACLs (the files' owner and mode stay as
  they are), with an explicit default ACL so files created later are readable by the
  gate and by no one else, and a check of logrotate's `create` mode;
- journal access for `--unit` (group systemd-journal);
- for containers, the exact-argv sudoers rule from docs/gate.md (never the docker group).

`--root DIR` writes every file below DIR (tests point it at a throwaway sshd config
directory), so the machine's own sshd is never touched.

This module is the command itself (checks, the dry-run report, applying with rollback,
the CLI). The checked flags are in `worker_spec`, the plan in `worker_plan`, what it
records for remove in `worker_manifest`, the probes in `worker_changes`, ACLs in
`worker_acl`, the account and journal group in `worker_account`, sshd in `worker_sshd`
and the other files' text in `worker_render`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import UserError
from ..gate.vocabulary import CONTAINER_NAME, UNIT_NAME
from . import system
from .bundle import DEFAULT_PYTHON, gate_command
from .worker_changes import Change
from .worker_plan import plan_remove, plan_setup
from .worker_render import logrotate_text, policy_text, sudoers_text
from .worker_spec import DEFAULT_USER, FilesRule, Layout, Spec, parse_files, parse_from, read_key
from .worker_sshd import (
    key_line,
    match_block,
    sshd_effective,
    sshd_includes_dropins,
    sshd_reload,
    sshd_test,
    verify_effective,
)

# What this module held before the split; `demo` and the tests import some of it from here.
__all__ = [
    "DEFAULT_USER",
    "Change",
    "FilesRule",
    "Layout",
    "Spec",
    "apply_changes",
    "cmd_remove",
    "cmd_setup",
    "default_audit_file",
    "key_line",
    "logrotate_text",
    "match_block",
    "parse_files",
    "parse_from",
    "plan_remove",
    "plan_setup",
    "policy_text",
    "read_key",
    "register",
    "remove",
    "setup",
    "sshd_effective",
    "sshd_reload",
    "sshd_test",
    "sudoers_text",
]

_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}", re.ASCII)


# --------------------------------------------------------------------------- setup/remove


def apply_changes(
    changes: Sequence[Change],
    layout: Layout,
    *,
    reload: bool,
    say: Callable[[str], None],
    verify: Callable[[], None] | None = None,
) -> None:
    """Apply in order. Right after the sshd drop-in is written, `sshd -t` (a rejected
    config is put back) and then `verify` (sshd's effective settings): a failure stops
    before anything after it, the gate's key above all, is installed."""
    dropin = layout.sshd_dropin
    before = dropin.read_bytes() if dropin.exists() else None
    touched_sshd = False
    for c in changes:
        say(f"  {c.what}")
        _note(c.apply(), say)
        if str(dropin) in c.what and not touched_sshd:
            touched_sshd = True
            try:
                sshd_test(layout)
            except UserError:
                if before is None:
                    dropin.unlink(missing_ok=True)
                else:
                    system.write_atomic(dropin, before, 0o644)
                raise
            if verify is not None:
                verify()
    if touched_sshd and reload:
        say(f"  {sshd_reload(layout)}")


def _note(result: object, say: Callable[[str], None]) -> None:
    if isinstance(result, str):
        say(f"    note: {result}")


def setup(spec: Spec, *, dry_run: bool, reload: bool, say: Callable[[str], None]) -> int:
    if not dry_run:
        system.need_root("logtorukun worker setup")
    system.need_program(system.SSHD, "openssh-server")
    if spec.files:
        system.need_program(system.SETFACL, "acl")
    if not sshd_includes_dropins(spec.layout):
        raise UserError(
            f"{spec.layout.sshd_config} has no `Include {spec.layout.sshd_dropin.parent}/*.conf`:"
            " add it as the first line (Debian's default config has it)"
        )
    if spec.containers and not os.access(system.VISUDO, os.X_OK):
        say(
            f"note: {system.VISUDO} not found (apt-get install sudo): the sudoers rule for"
            " docker logs will be written but cannot be checked"
        )
    lay = spec.layout
    command = gate_command(lay.gate_entry, lay.policy, python=spec.python)

    def verify() -> None:
        ca = lay if spec.trust_ca else None
        verify_effective(lay, lay.user, command, lay.authorized_keys, spec.sources, ca)

    changes = plan_setup(spec)
    block_current = not any(str(lay.sshd_dropin) in c.what for c in changes)
    if block_current and lay.sshd_dropin.exists():
        verify()  # the block is as setup writes it: does sshd apply it, though?
    if not changes:
        say(f"worker setup for {lay.user}: nothing to change (sshd's effective settings checked)")
        return 0
    if dry_run:
        say(
            f"worker setup for {lay.user} would make {len(changes)} change(s)"
            " (dry run: nothing was changed):"
        )
        for c in changes:
            say(f"  {c.what}")
            if c.detail:
                say(c.detail.rstrip("\n"))
        return 0
    say(f"worker setup for {lay.user}: {len(changes)} change(s)")
    apply_changes(changes, lay, reload=reload, say=say, verify=verify)
    if spec.containers and os.access(system.VISUDO, os.X_OK):
        system.run([system.VISUDO, "-cf", str(lay.sudoers)])
    say("done; check it from the web server with: logtorukun doctor")
    return 0


def remove(
    layout: Layout, *, dry_run: bool, keep_user: bool, reload: bool, say: Callable[[str], None]
) -> int:
    if not dry_run:
        system.need_root("logtorukun worker remove")
    changes = plan_remove(layout, keep_user=keep_user)
    if not changes:
        say(f"worker remove for {layout.user}: nothing to remove")
        return 0
    if dry_run:
        say(
            f"worker remove for {layout.user} would make {len(changes)} change(s)"
            " (dry run: nothing was changed):"
        )
        for c in changes:
            say(f"  {c.what}")
        return 0
    say(f"worker remove for {layout.user}: {len(changes)} change(s)")
    touched_sshd = any(str(layout.sshd_dropin) in c.what for c in changes)
    for c in changes:
        say(f"  {c.what}")
        _note(c.apply(), say)
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
        keys=list(dict.fromkeys(read_key(k) for k in args.key or [])),
        sources=parse_from(args.from_),
        files=parse_files(args.files),
        units=list(dict.fromkeys(args.unit)),
        containers=list(dict.fromkeys(args.container)),
        python=args.python,
        audit_file=audit,
        adopt_user=args.adopt_user,
        trust_ca=read_key(args.trust_ca, "--trust-ca") if args.trust_ca else None,
    )
    if not spec.keys and spec.trust_ca is None:
        raise UserError(
            "give --key PUBKEY_FILE (the web server's key) or --trust-ca CA.pub (its user CA)"
        )
    try:
        gate_command(layout.gate_entry, layout.policy, python=spec.python)
    except ValueError as exc:
        raise UserError(f"{exc} (choose a --root without such characters)") from None
    if not os.access(spec.python, os.X_OK):
        raise UserError(
            f"--python {spec.python}: not executable here; the gate needs Python >= 3.11"
        )
    return setup(spec, dry_run=args.dry_run, reload=not args.no_reload, say=print)


def cmd_remove(args: argparse.Namespace) -> int:
    return remove(
        _layout(args),
        dry_run=args.dry_run,
        keep_user=args.keep_user,
        reload=not args.no_reload,
        say=print,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="set up or remove the gate on this worker (run as root)",
        description="Provision this machine as a logtorukun worker.",
    )
    wsub = p.add_subparsers(dest="worker_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--user", default=DEFAULT_USER, help="gate user (default: %(default)s)")
        q.add_argument(
            "--root", metavar="DIR", help="write every file below DIR instead of / (tests, chroots)"
        )
        q.add_argument("--dry-run", action="store_true", help="print every change, change nothing")
        q.add_argument("--no-reload", action="store_true", help="do not signal sshd to reload")

    s = wsub.add_parser(
        "setup",
        help="create the gate user, key, policy and sshd block",
        description="Idempotent: a second run changes nothing.",
    )
    common(s)
    s.add_argument(
        "--key",
        action="append",
        metavar="PUBKEY_FILE",
        help="the web server's public key (*.pub); twice while rotating keys",
    )
    s.add_argument(
        "--trust-ca",
        metavar="CA.pub",
        help="accept certificates of this user CA (logtorukun ca show) instead of, or beside,"
        " --key",
    )
    s.add_argument(
        "--from",
        dest="from_",
        action="append",
        default=[],
        metavar="ADDR",
        help="web server address or CIDR the key may connect from (repeatable)",
    )
    s.add_argument(
        "--files",
        action="append",
        default=[],
        metavar="ROOT:PATTERN",
        help="log files the gate may read, e.g. /var/log/app:*.log (repeatable)",
    )
    s.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="UNIT",
        help="systemd unit whose journal may be read (repeatable)",
    )
    s.add_argument(
        "--container",
        action="append",
        default=[],
        metavar="NAME",
        help="docker container whose logs may be read (repeatable; adds a sudoers rule)",
    )
    s.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help="Python ≥ 3.11 that runs the gate (default: %(default)s)",
    )
    s.add_argument(
        "--audit-file",
        metavar="PATH",
        help="gate audit as JSON lines in PATH, or 'syslog' (default: syslog when /dev/log exists)",
    )
    s.add_argument(
        "--adopt-user",
        action="store_true",
        help="take over an existing --user account (remove restores its shell, home, password)",
    )
    s.set_defaults(func=cmd_setup)

    r = wsub.add_parser("remove", help="undo `worker setup`")
    common(r)
    r.add_argument("--keep-user", action="store_true", help="leave the system user in place")
    r.set_defaults(func=cmd_remove)
