"""`logtorukun doctor`: the pre-deployment checklist (docs/security.md), executed against reality.

Run on the web server with its config. For each worker it asks the worker itself, with
the real OpenSSH client and the web server's own key, the questions a reviewer would:
does the port answer, is the host key pinned and the same, does sshd still offer
passwords, is the key forced to the gate, does an injection or a file outside the
policy get refused. Then the server side: key file modes, timeouts, the audit store
(writable, chain intact), and whether host key checking is switched off anywhere.

Each check prints pass or fail and, when it fails, the command or line that fixes it.
The exit status is 1 when any check failed, so it can gate a deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from ..config import Config, HostConfig, load_config
from ..errors import UserError
from ..gate.vocabulary import Exit
from . import system
from .doctor_escape import ESCAPE_CHECKS, escape_checks, sshd_fix
from .doctor_probe import FAIL, PASS, SKIP, SSH_FAILED, Check, HostProbe

# ssh_config files whose settings would affect an operator's plain `ssh` to a worker.
SSH_CONFIGS: tuple[str, ...] = ("/etc/ssh/ssh_config", "/etc/ssh/ssh_config.d", "~/.ssh/config")
_DISABLED_CHECKING = re.compile(
    r"(?im)^\s*(StrictHostKeyChecking\s*=?\s*(no|off)\b|UserKnownHostsFile\s*=?\s*/dev/null\b"
    r"|GlobalKnownHostsFile\s*=?\s*/dev/null\b)"
)
GATE_BAD_REQUEST, GATE_REFUSED = Exit.BAD_REQUEST, Exit.REFUSED  # as a client sees them
INSTALL_CHECK = "gate install read-only to the gate user"


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


@contextmanager
def _private_copy(key: Path) -> Iterator[Path]:
    """The key as a 0600 copy: ssh refuses a world-readable key, and the probes test
    the worker, not the key file's mode (that has its own check)."""
    with tempfile.TemporaryDirectory(prefix="logtorukun-doctor-") as d:
        copy = Path(d) / "id"
        shutil.copyfile(key, copy)
        copy.chmod(0o600)
        yield copy


# --------------------------------------------------------------------------- host checks


def check_host(host: HostConfig) -> list[Check]:
    scope = f"host {host.name}"
    checks: list[Check] = []

    def add(name: str, ok: bool | None, detail: str, fix: str = "") -> None:
        status = SKIP if ok is None else PASS if ok else FAIL
        checks.append(Check(scope, name, status, detail, fix if status == FAIL else ""))

    where = f"{host.address}:{host.port}"
    started = time.monotonic()
    try:
        with socket.create_connection((host.address, host.port), timeout=host.connect_timeout):
            reachable = True
            add(
                "port reachable",
                True,
                f"{where} answered in {(time.monotonic() - started) * 1000:.0f} ms",
            )
    except OSError as exc:
        reachable = False
        add(
            "port reachable",
            False,
            f"{where}: {exc.strerror or exc}",
            "start sshd on the worker and open port"
            f" {host.port} from this server (firewall, security group)",
        )

    key_ok = _key_checks(host, add)
    add(
        "connection timeout set",
        0 < host.connect_timeout <= 60 and host.request_timeout > 0,
        f"connect_timeout = {host.connect_timeout:g} s, request_timeout ="
        f" {host.request_timeout:g} s",
        f"set connect_timeout (1-60) and request_timeout (> 0) in the [[host]] {host.name}"
        " of the config",
    )
    kh = host.known_hosts
    if str(kh) == "/dev/null":
        add(
            "host key pinned",
            False,
            "known_hosts is /dev/null: any host key would be accepted",
            f"point known_hosts at a real file and run: logtorukun hosts trust {host.name}",
        )
        return checks
    if not reachable or not key_ok:
        why = "port not reachable" if not reachable else "no usable key file"
        for name in (
            "host key pinned",
            "password authentication refused",
            "key forced to the gate",
            "injection refused",
            "file outside policy refused",
            INSTALL_CHECK,
            *ESCAPE_CHECKS,
        ):
            add(name, None, f"not checked: {why}")
        return checks

    with _private_copy(host.key) as key:
        w = HostProbe(host, key)
        # No authentication at all: sshd answers with the methods it would accept, and
        # the host key is checked first, so one probe answers two questions.
        p = w.run("true", "-o", "PreferredAuthentications=none", "-o", "NumberOfPasswordPrompts=0")
        pin_fix = (
            f"check the worker's key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
            f" on it), then: logtorukun hosts trust {host.name} --fingerprint SHA256:..."
        )
        if "IDENTIFICATION HAS CHANGED" in p.err:
            add(
                "host key pinned",
                False,
                f"the host key of {where} differs from {kh}: a new key or a machine in the middle",
                f"if the worker was reinstalled: {pin_fix}",
            )
            return checks
        if "Host key verification failed" in p.err:
            add("host key pinned", False, f"no key for {where} in {kh}", pin_fix)
            return checks
        methods = re.search(r"Permission denied \(([^)]*)\)", p.err)
        if methods is None:
            add("host key pinned", None, f"no answer from sshd: {_last(p.err)}")
            return checks
        add("host key pinned", True, f"{where} presented the key pinned in {kh}")
        offered = methods.group(1).split(",")
        weak = [m for m in offered if m in ("password", "keyboard-interactive")]
        add(
            "password authentication refused",
            not weak,
            f"sshd offers {', '.join(offered)} to {host.user}",
            "the gate user needs AuthenticationMethods publickey, PasswordAuthentication no"
            f" and KbdInteractiveAuthentication no: {sshd_fix(host.user)}",
        )

        marker = f"logtorukun-doctor-{secrets.token_hex(6)}"
        p = w.run(f"echo {marker}")
        forced_fix = (
            f"on the worker, the key line in /etc/logtorukun/authorized_keys/{host.user} needs"
            ' restrict,command="<gate> --policy <file>" and the Match block ForceCommand (run'
            " logtorukun worker setup there)"
        )
        accepted = p.code != SSH_FAILED
        if marker in p.out:
            add(
                "key forced to the gate",
                False,
                f"`echo {marker}` ran on the worker: this key has a shell",
                forced_fix,
            )
            forced = False
        elif p.code == SSH_FAILED:
            add(
                "key forced to the gate",
                False,
                f"the key was not accepted: {_last(p.err)}",
                f"install {host.key}.pub on the worker (logtorukun worker setup --key ...)",
            )
            forced = False
        elif p.code == GATE_BAD_REQUEST and "logtorukun-gate:" in p.err:
            add(
                "key forced to the gate",
                True,
                f"a command outside the grammar was refused: {_last(p.err)}",
            )
            forced = True
        else:
            add(
                "key forced to the gate",
                False,
                f"unexpected answer (exit {p.code}): {_last(p.err or p.out)}",
                forced_fix,
            )
            forced = False

        leaks: list[str] = []
        for probe in (
            f"tail -n 1 /etc/hostname; echo {marker}",
            f"tail -n 1 /etc/hostname\necho {marker}",
            f"tail -n 1 /etc/hostname;echo${{IFS}}{marker}",
            f"tail -n 1 $(echo {marker})",
            f"grep -e x /etc/hostname `echo {marker}`",
        ):
            p = w.run(probe)
            if marker in p.out or p.code == 0:
                leaks.append(f"{probe!r} -> exit {p.code}")
        add(
            "injection refused",
            not leaks and forced,
            "separators, newline, ${IFS}, $(..) and backticks were all refused"
            if not leaks
            else f"ran: {'; '.join(leaks)}"
            if leaks
            else "not forced to the gate",
            forced_fix,
        )

        p = w.run("tail -n 1 /etc/shadow")
        outside_ok = p.code == GATE_REFUSED and not p.out
        add(
            "file outside policy refused",
            outside_ok,
            f"tail /etc/shadow: exit {p.code}, {_last(p.err) if p.err else 'no reason'}",
            "give the gate a policy that names only log files ([[files]] root/patterns), and"
            " keep the gate user out of groups that can read /etc/shadow",
        )
        _install_check(w, add, forced=forced)
        if accepted:
            escape_checks(w, add, forced=forced)
        else:
            for name in ESCAPE_CHECKS:
                add(name, None, "not checked: the key was not accepted")
    return checks


def _install_check(w: HostProbe, add: CheckAdder, *, forced: bool) -> None:
    """The gate reports (in `sources`) whether its own account could change what the
    forced command runs: the link to the build, the build, the directories above them
    (gate/install.py)."""
    user = w.host.user
    if not forced:
        add(INSTALL_CHECK, None, "not checked: the key is not forced to the gate")
        return
    p = w.run("sources")
    try:
        doc = json.loads(p.out)
    except ValueError:
        add(INSTALL_CHECK, None, f"not checked: sources exit {p.code}, {_last(p.err or p.out)}")
        return
    install = doc.get("install") if isinstance(doc, dict) else None
    if not isinstance(install, dict):
        gate = doc.get("gate", "?") if isinstance(doc, dict) else "?"
        add(
            INSTALL_CHECK,
            None,
            f"not checked: gate {gate} does not report its install (older than builds;"
            " run logtorukun worker setup on the worker)",
        )
        return
    problems = [str(x) for x in install.get("problems", [])]
    where = f"build {install.get('build')} at {install.get('link')}"
    add(
        INSTALL_CHECK,
        not problems,
        f"{where}: root's, nothing of it writable by {user}"
        if not problems
        else f"{where}: {'; '.join(problems)}",
        f"on the worker, as root: take {user}'s ownership and write access away from the"
        f" paths named (chown root, chmod go-w, setfacl -x u:{user}), then rerun"
        " logtorukun worker setup (it installs the gate as a link to a build, all root's)",
    )


def _key_checks(host: HostConfig, add: CheckAdder) -> bool:
    key = host.key
    try:
        st = key.stat()
    except FileNotFoundError:
        add(
            "key file mode 600",
            False,
            f"{key} does not exist",
            f"ssh-keygen -t ed25519 -N '' -f {key}, then install {key}.pub on the worker",
        )
        return False
    except OSError as exc:
        add("key file mode 600", False, f"{key}: {exc.strerror}", f"check {key.parent}")
        return False
    mode = stat.S_IMODE(st.st_mode)
    ok = not mode & 0o077 and st.st_uid == os.geteuid()
    owner = "you" if st.st_uid == os.geteuid() else f"uid {st.st_uid}"
    add(
        "key file mode 600",
        ok,
        f"{key} is {mode:04o}, owned by {owner}",
        f"chown {os.geteuid()} {key} && chmod 600 {key}",
    )
    return os.access(key, os.R_OK)


class CheckAdder(Protocol):
    """The signature of check_host's `add`."""

    def __call__(self, name: str, ok: bool | None, detail: str, fix: str = "") -> None: ...


# --------------------------------------------------------------------------- server checks


def check_server(config: Config) -> list[Check]:
    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str, fix: str = "") -> None:
        checks.append(Check("server", name, PASS if ok else FAIL, detail, "" if ok else fix))

    db = config.server.database
    try:
        from ..audit.store import AuditStore
    except ImportError as exc:  # pragma: no cover - the audit package ships with us
        add("audit store", False, f"cannot load the audit module: {exc}")
        return checks
    try:
        if not config.server.database_url and not db.parent.is_dir():
            raise UserError(f"{db.parent} does not exist")
        store = AuditStore(config.server.store)
        try:
            report = store.verify()
            writable = bool(config.server.database_url) or os.access(db, os.W_OK)
        finally:
            store.close()
        add(
            "audit store writable",
            writable,
            f"{db} opened for writing",
            f"give the web server's user write access to {db} and {db.parent}",
        )
        add(
            "audit chain valid",
            report.ok,
            report.summary(),
            f"investigate: logtorukun --config {config.path} audit verify; restore the store"
            " from a backup if records were changed",
        )
    except UserError as exc:
        add(
            "audit store writable",
            False,
            str(exc),
            f"mkdir -p {db.parent} and let the web server's user write there",
        )

    _forward_checks(config, add)
    found = [
        f"[[host]] {h.name}: known_hosts = /dev/null"
        for h in config.hosts
        if str(h.known_hosts) == "/dev/null"
    ] + _disabled_checking()
    add(
        "host key checking on",
        not found,
        "; ".join(found)
        if found
        else "every [[host]] has a known_hosts file; no ssh_config"
        f" disables checking ({', '.join(SSH_CONFIGS)})",
        "delete those lines (give each [[host]] a real known_hosts file and run logtorukun"
        " hosts trust HOST): a changed host key must stop the connection",
    )
    return checks


def _forward_checks(config: Config, add: Callable[[str, bool, str, str], None]) -> None:
    """SIEM forwarders: is the trail reaching the collector (audit/forward.py)?"""
    if not config.forward:
        return
    from ..audit.forward import doctor_report
    from ..audit.store import AuditStore

    try:
        with AuditStore(config.server.store, readonly=True) as store:
            head = store.head()
    except UserError as exc:
        add("audit forwarding", False, str(exc), "")
        return
    for cfg in config.forward:
        ok, detail, fix = doctor_report(head.seq if head else 0, cfg, time.time())
        add(f"audit forwarding to {cfg.name}", ok, detail, fix)


def _disabled_checking() -> list[str]:
    found: list[str] = []
    files: list[Path] = []
    for entry in SSH_CONFIGS:
        p = Path(entry).expanduser()
        if p.is_dir():
            files += sorted(x for x in p.iterdir() if x.suffix == ".conf")
        elif p.is_file():
            files.append(p)
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for m in _DISABLED_CHECKING.finditer(text):
            line = text.count("\n", 0, m.start(1)) + 1
            found.append(f"{f}:{line}: {m.group(1).strip()}")
    return found


# --------------------------------------------------------------------------- the command


def run_doctor(config: Config, hosts: Sequence[str] = ()) -> list[Check]:
    system.need_program(system.SSH, "openssh-client")
    selected = list(config.hosts)
    if hosts:
        from ..client.hosts import select_hosts

        selected = select_hosts(config, hosts)
    checks: list[Check] = []
    for h in selected:
        checks += check_host(h)
        if config.ssh is not None and config.ssh.certificates:
            from .doctor_certs import check_certificates

            checks += check_certificates(h, config.ssh)
    checks += check_server(config)
    return checks


def render(checks: Sequence[Check]) -> str:
    out: list[str] = []
    scope = None
    for c in checks:
        if c.scope != scope:
            scope = c.scope
            out.append(scope)
        out.append(f"  {c.status.upper():4}  {c.name}: {c.detail}")
        if c.fix:
            out.append(f"        fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    skipped = sum(c.status == SKIP for c in checks)
    summary = f"{len(checks)} checks: {len(checks) - failed - skipped} passed, {failed} failed"
    out.append(summary + (f", {skipped} not checked" if skipped else ""))
    return "\n".join(out)


def cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.hosts:
        raise UserError(f"{config.path}: no [[host]] configured; add one (docs/quickstart.md)")
    checks = run_doctor(config, args.hosts)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        print(render(checks))
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="run the pre-deployment checklist against every configured worker",
        description="Checks every worker and this server; exit 1 if anything failed.",
    )
    p.add_argument("hosts", nargs="*", metavar="GLOB", help="only these hosts (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor)
