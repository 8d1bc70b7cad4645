"""Everything `worker setup` has to do with sshd: the authorized_keys line and the
`Match User` drop-in it writes, and checking (`sshd -t`, `sshd -T`) and reloading sshd.

sshd is the gate's front door, so its config is rendered in one place and validated
before any reload.
"""

from __future__ import annotations

import functools
import glob
import ipaddress
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from . import system
from .worker_spec import Layout


def key_line(key: str, command: str, sources: Sequence[str] | None) -> str:
    """`restrict,from="...",command="..." KEY`: the key can do nothing but run the gate."""
    opts = ["restrict"]
    if sources:
        opts.append(f'from="{",".join(sources)}"')
    if '"' in command or "\\" in command or "\n" in command:
        raise UserError(f"forced command {command!r} cannot be quoted safely")
    opts.append(f'command="{command}"')
    return f"{','.join(opts)} {key}"


# Session bounds in the Match block (docs/security.md): a peer that stops answering is
# dropped after about INTERVAL * COUNT_MAX seconds; a connection with no channel open
# (the client pool between requests, or a stolen key just holding a socket) after
# UNUSED seconds; MAX_SESSIONS is sshd's default, written down so an earlier global
# change cannot raise it (the client pool opens at most 8 one-shot channels + a bridge).
CLIENT_ALIVE_INTERVAL = 30
CLIENT_ALIVE_COUNT_MAX = 4
UNUSED_CONNECTION_TIMEOUT = 600
MAX_SESSIONS = 10
# UnusedConnectionTimeout exists from OpenSSH 9.2 on; older sshd rejects the keyword.
UNUSED_SINCE = (9, 2)


@functools.cache
def sshd_version() -> tuple[int, int]:
    """(major, minor) of the installed sshd; (0, 0) if it cannot be told."""
    out = system.run([system.SSHD, "-V"], ok=range(256))
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def principal_line(user: str, command: str, sources: Sequence[str] | None) -> str:
    """`--trust-ca`: the AuthorizedPrincipalsFile line, with a key line's restrictions.

    A certificate's force-command must equal this command= byte for byte, or sshd
    refuses it (the web server's `gate_command`, docs/configuration.md)."""
    return key_line(user, command, sources)


def ca_lines(layout: Layout) -> str:
    return (
        "    # certificates of the user CA, for the principal named in the principals file\n"
        f"    TrustedUserCAKeys {layout.user_ca}\n"
        f"    AuthorizedPrincipalsFile {layout.principals.parent}/%u\n"
        f"    RevokedKeys {layout.krl}\n"
    )


def match_block(
    user: str,
    keys_file: Path,
    command: str,
    *,
    unused_timeout: bool | None = None,
    ca: Layout | None = None,
) -> str:
    """The sshd drop-in for the gate user; each line is there for a reason (docs/security.md).

    `unused_timeout`: write UnusedConnectionTimeout (default: if this sshd knows it).
    """
    keys_pattern = str(keys_file.parent / "%u")
    if unused_timeout is None:
        unused_timeout = sshd_version() >= UNUSED_SINCE
    unused = (
        f"    UnusedConnectionTimeout {UNUSED_CONNECTION_TIMEOUT}\n"
        if unused_timeout
        else "    # UnusedConnectionTimeout: not before OpenSSH 9.2 (the installed sshd is older)\n"
    )
    cert_lines = ca_lines(ca) if ca is not None else ""
    return f"""\
# written by `logtorukun worker setup`; `logtorukun worker remove` deletes it
Match User {user}
    # the key file lives under /etc, owned by root: the user cannot add keys
    AuthorizedKeysFile {keys_pattern}
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    # no port, agent, X11 or socket forwarding: ssh is not a tunnel into this network
    DisableForwarding yes
    PermitTunnel no
    PermitTTY no
    PermitUserRC no
    # the gate reads SSH_USER_AUTH to record which key (or certificate) connected
    ExposeAuthInfo yes
{cert_lines}    # a second lock: even a key added without command= runs only the gate
    ForceCommand {command}
    # bounds on dead, idle and crowded connections
    ClientAliveInterval {CLIENT_ALIVE_INTERVAL}
    ClientAliveCountMax {CLIENT_ALIVE_COUNT_MAX}
{unused}    MaxSessions {MAX_SESSIONS}
"""


def sshd_includes_dropins(layout: Layout) -> bool:
    try:
        text = layout.sshd_config.read_text()
    except FileNotFoundError:
        raise UserError(
            f"{layout.sshd_config} not found: install openssh-server (or point --root at an"
            " sshd config directory)"
        ) from None
    want = str(layout.sshd_dropin.parent)
    for m in re.finditer(r"(?mi)^\s*Include\s+(\S+)", text):
        inc = m.group(1)
        if inc.startswith(want + "/") or inc.startswith("sshd_config.d/"):
            return True
    return False


def sshd_test(layout: Layout) -> None:
    """`sshd -t -f CONFIG`: a config sshd would refuse is never reloaded."""
    out = system.run([system.SSHD, "-t", "-f", str(layout.sshd_config)], ok=(0, 1, 255))
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()
        raise UserError(f"sshd -t rejected the config: {why[-1] if why else 'no reason given'}")


def sshd_effective(layout: Layout, user: str, addr: str = "127.0.0.1") -> dict[str, str]:
    """`sshd -T -C user=...,host=...,addr=...`: what sshd really applies to the gate user."""
    out = system.run(
        [
            system.SSHD,
            "-T",
            "-f",
            str(layout.sshd_config),
            "-C",
            f"user={user},host={addr},addr={addr}",
        ],
        ok=(0, 1, 255),
    )
    if out.returncode != 0:
        raise UserError(f"sshd -T failed: {out.stderr.strip().splitlines()[-1:]}")
    conf: dict[str, str] = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k.lower(), v)
    return conf


def sshd_reload(layout: Layout) -> str:
    """SIGHUP the running sshd named by the config's PidFile (what `systemctl reload ssh`
    does); return what happened, for the report."""
    pidfile = sshd_effective(layout, "root").get("pidfile", "/run/sshd.pid")
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return f"sshd is not running (no pid in {pidfile}); its next start uses the new config"
    if not system.alive(pid):
        return f"sshd is not running (stale {pidfile}); its next start uses the new config"
    os.kill(pid, signal.SIGHUP)
    return f"reloaded sshd (pid {pid}, SIGHUP)"


# An address no web server has (TEST-NET-1): a Match Address that weakens the block
# for everyone but the web server is caught too.
OTHER_ADDRESS = "192.0.2.7"


def check_addresses(sources: Sequence[str]) -> list[str]:
    """The web server's addresses from `--from` (literal addresses, networks' first
    address; wildcards and names cannot be asked about) plus OTHER_ADDRESS."""
    found: list[str] = []
    for pat in sources:
        if pat.startswith("!"):
            continue
        try:
            found.append(str(ipaddress.ip_network(pat, strict=False).network_address))
        except ValueError:
            continue
    return list(dict.fromkeys([*found, OTHER_ADDRESS]))


def required_settings(command: str, keys_file: Path, ca: Layout | None = None) -> dict[str, str]:
    """What sshd -T must say for the gate user; numbers are upper bounds."""
    want = {
        "forcecommand": command,
        "authorizedkeysfile": str(keys_file.parent / "%u"),
        "permittty": "no",
        "disableforwarding": "yes",
        "permittunnel": "no",
        "permituserrc": "no",
        "authenticationmethods": "publickey",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "clientaliveinterval": str(CLIENT_ALIVE_INTERVAL),
        "clientalivecountmax": str(CLIENT_ALIVE_COUNT_MAX),
        "maxsessions": str(MAX_SESSIONS),
    }
    if sshd_version() >= UNUSED_SINCE:
        want["unusedconnectiontimeout"] = str(UNUSED_CONNECTION_TIMEOUT)
    if ca is not None:
        want["trustedusercakeys"] = str(ca.user_ca)
        want["authorizedprincipalsfile"] = f"{ca.principals.parent}/%u"
        want["revokedkeys"] = str(ca.krl)
    return want


_BOUNDS = {"clientaliveinterval", "clientalivecountmax", "maxsessions", "unusedconnectiontimeout"}


def _weaker(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return True
    if key in _BOUNDS:
        # at most ours, and not off (0 / none switch the bound off)
        return not have.isdigit() or int(have) == 0 or int(have) > int(want)
    return have != want


def verify_effective(
    layout: Layout,
    user: str,
    command: str,
    keys_file: Path,
    sources: Sequence[str],
    ca: Layout | None = None,
) -> None:
    """Fail, naming the file to change, if sshd's own view of the gate user (from the web
    server's address and from another) is weaker than the block setup writes: sshd keeps
    the first value it reads, so an earlier drop-in or Match wins over ours."""
    want = required_settings(command, keys_file, ca)
    for addr in check_addresses(sources):
        eff = sshd_effective(layout, user, addr)
        weak = [k for k, v in want.items() if _weaker(k, eff.get(k), v)]
        if not weak:
            continue
        key = weak[0]
        where = _set_by(layout, key)
        named = f"set by {', '.join(where)}" if where else "set before it somewhere"
        raise UserError(
            f"sshd's effective {_CASE.get(key, key)} for {user} from {addr} is"
            f" {eff.get(key, 'unset')!r}, not {want[key]!r}, although {layout.sshd_dropin}"
            f" says so: {named} (sshd keeps the first value it reads); remove it there or"
            f" keep its Match from applying to {user}, then rerun setup"
            + (f" ({len(weak) - 1} more weakened: {', '.join(weak[1:])})" if len(weak) > 1 else "")
        )


_CASE = {
    "forcecommand": "ForceCommand",
    "authorizedkeysfile": "AuthorizedKeysFile",
    "permittty": "PermitTTY",
    "disableforwarding": "DisableForwarding",
    "permittunnel": "PermitTunnel",
    "permituserrc": "PermitUserRC",
    "authenticationmethods": "AuthenticationMethods",
    "passwordauthentication": "PasswordAuthentication",
    "kbdinteractiveauthentication": "KbdInteractiveAuthentication",
    "clientaliveinterval": "ClientAliveInterval",
    "clientalivecountmax": "ClientAliveCountMax",
    "maxsessions": "MaxSessions",
    "unusedconnectiontimeout": "UnusedConnectionTimeout",
    "trustedusercakeys": "TrustedUserCAKeys",
    "authorizedprincipalsfile": "AuthorizedPrincipalsFile",
    "revokedkeys": "RevokedKeys",
}
# Older spellings sshd still accepts for the same setting.
_ALIASES = {"kbdinteractiveauthentication": ("challengeresponseauthentication",)}


def _set_by(layout: Layout, key: str) -> list[str]:
    """`file:line` of every line outside our drop-in that sets `key`, in sshd's order."""
    names = (key, *_ALIASES.get(key, ()))
    found: list[str] = []
    for path, lineno, line in _config_lines(layout, layout.sshd_config, depth=0):
        if path == layout.sshd_dropin:
            continue
        word = re.split(r"[\s=]+", line.strip(), maxsplit=1)[0].lower()
        if word in names:
            found.append(f"{path}:{lineno}")
    return found[:3]


def _config_lines(layout: Layout, path: Path, depth: int) -> list[tuple[Path, int, str]]:
    """Every line of `path` with its Include files spliced in where sshd reads them."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out: list[tuple[Path, int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if depth < 8 and words and words[0].lower() == "include":
            for pat in words[1:]:
                full = pat if pat.startswith("/") else str(layout.p("/etc/ssh") / pat)
                for inc in sorted(glob.glob(full)):
                    out += _config_lines(layout, Path(inc), depth + 1)
        else:
            out.append((path, n, line))
    return out
