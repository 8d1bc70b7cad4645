"""Everything `worker setup` has to do with sshd: the authorized_keys line and the
`Match User` drop-in it writes, and checking (`sshd -t`, `sshd -T`) and reloading sshd.

sshd is the gate's front door, so its config is rendered in one place and validated
before any reload.
"""

from __future__ import annotations

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


def match_block(user: str, keys_file: Path, command: str) -> str:
    """The sshd drop-in for the gate user; each line is there for a reason (docs/security.md)."""
    keys_pattern = str(keys_file.parent / "%u")
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
    # a second lock: even a key added without command= runs only the gate
    ForceCommand {command}
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
    """`sshd -T -C user=...`: what sshd will really apply to the gate user."""
    out = system.run(
        [
            system.SSHD,
            "-T",
            "-f",
            str(layout.sshd_config),
            "-C",
            f"user={user},host=localhost,addr={addr}",
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
