"""The gate user's account: refusing to take over someone else's, adopting one on
request (and giving it back), and journal read access for `--unit`.

Journal access is membership of `systemd-journal`: on Debian and every systemd
distribution that group exists only to read the whole journal (journal files are
`root:systemd-journal`, mode 0640), unlike `adm`, which also opens /var/log. An ACL of our
own on /var/log/journal would grant the same files, but journald and systemd-tmpfiles
rewrite those ACLs, so the group is both the narrowest and the one that lasts. Either
way the gate user can read every unit's journal; the policy's `[[journal]]` units are
what the gate lets a request name.
"""

from __future__ import annotations

import grp
import pwd

from ..errors import UserError
from . import system

JOURNAL_GROUP = "systemd-journal"


def account_state(user: str) -> dict[str, str]:
    """What `--adopt-user` records, so remove can put the account back as it was."""
    pw = pwd.getpwnam(user)
    return {
        "shell": pw.pw_shell,
        "home": pw.pw_dir,
        "password": system.shadow_password(user) or "",
    }


def restore_account(user: str, state: dict[str, str]) -> None:
    system.run([system.USERMOD, "-s", state["shell"], "-d", state["home"], user])
    # The hash goes through stdin (chpasswd -e), never through argv where `ps` shows it.
    system.run([system.CHPASSWD, "-e"], input=f"{user}:{state['password']}\n")


def refuse_foreign(user: str, *, adopt: bool, ours: bool) -> None:
    """An existing account setup did not create is someone's: never take it silently."""
    if ours or adopt or not system.user_exists(user):
        return
    raise UserError(
        f"--user {user}: this account exists and was not created by `worker setup`; pick"
        " a new name, or pass --adopt-user to take it over (its shell, home and password"
        " are recorded and `worker remove` puts them back)"
    )


def journal_group() -> str:
    try:
        grp.getgrnam(JOURNAL_GROUP)
    except KeyError:
        raise UserError(
            f"--unit needs the {JOURNAL_GROUP} group (readers of the journal), which this"
            " machine lacks: is systemd-journald installed?"
        ) from None
    return JOURNAL_GROUP


def in_group(user: str, group: str) -> bool:
    if not system.user_exists(user):
        return False
    g = grp.getgrnam(group)
    return user in g.gr_mem or pwd.getpwnam(user).pw_gid == g.gr_gid


def add_to_group(user: str, group: str) -> None:
    system.run([system.GPASSWD, "-a", user, group])


def drop_from_group(user: str, group: str) -> None:
    try:
        members = grp.getgrnam(group).gr_mem
    except KeyError:
        return
    if user in members:
        system.run([system.GPASSWD, "-d", user, group])
