"""`logtorukun serve`, `logtorukun user ...`, `logtorukun token ...`.

User and token commands open the same SQLite file as the server (the `[server] database`
of the config), so they work while the server runs; removing a user or revoking a token
takes effect on that user's next request.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ..config import Config, load_config
from ..web.auth import AuthError, AuthStore, parse_duration


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the web server",
        description="Run the web server (default 127.0.0.1:8080; put nginx "
        "with TLS in front, see docs/web.md).",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="override [server] listen")
    p.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    p.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="add, list or remove web users")
    ucmds = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    p = ucmds.add_parser("add", help="add a user with one or more roles")
    p.add_argument("name")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE",
        help="a [[role]] name from the config; repeat for several",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    g.add_argument(
        "--sso",
        action="store_true",
        help="no password: signs in only through the trusted auth proxy",
    )
    p.set_defaults(func=cmd_user_add)
    p = ucmds.add_parser("passwd", help="set a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=cmd_user_passwd)
    p = ucmds.add_parser("list", help="list users and their roles")
    p.set_defaults(func=cmd_user_list)
    p = ucmds.add_parser("remove", help="remove a user, their sessions and tokens")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_remove)
    p = ucmds.add_parser("disable", help="stop a user's sign-ins, sessions and tokens")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_disable, disabled=True)
    p = ucmds.add_parser("enable", help="undo `user disable`")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_disable, disabled=False)
    p = ucmds.add_parser("roles", help="replace a user's roles")
    p.add_argument("name")
    p.add_argument("--role", action="append", required=True, metavar="ROLE")
    p.set_defaults(func=cmd_user_roles)

    token = sub.add_parser("token", help="create, list or revoke API tokens")
    tcmds = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = tcmds.add_parser("create", help="print a new token for USER (shown once)")
    p.add_argument("user")
    p.add_argument(
        "--expires",
        default="30d",
        metavar="DURATION",
        help="30d (default), 12h, 2w, 90m, or 'never'",
    )
    p.set_defaults(func=cmd_token_create)
    p = tcmds.add_parser("list", help="list tokens (ids, never the secrets)")
    p.add_argument("user", nargs="?")
    p.set_defaults(func=cmd_token_list)
    p = tcmds.add_parser("revoke", help="revoke a token by id (or by the token itself)")
    p.add_argument("id")
    p.set_defaults(func=cmd_token_revoke)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _auth(config: Config) -> AuthStore:
    if not config.server.database_url and not config.server.database.parent.is_dir():
        raise AuthError(
            f"{config.server.database.parent}: no such directory (create it, "
            "owned by the server's user, mode 0700; see docs/web.md)"
        )
    return AuthStore(config.server.store, busy_timeout=config.server.busy_timeout)


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AuthError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise AuthError("the passwords differ")
    return first


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..web.app import create_app

    config = _config(args)
    listen = args.listen or config.server.listen
    host, _, port = listen.rpartition(":")
    # No mkdir here: a wrong `database` path must stop the server (it cannot audit),
    # not quietly start a new, empty audit trail somewhere else.
    from ..ops.worker_spec import default_gate_command

    app = create_app(config, gate_command_for=default_gate_command)
    forwarded = ",".join(config.server.trusted_proxies) or "127.0.0.1"
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level=args.log_level,
        loop="uvloop",  # libuv and the C HTTP parser: less CPU per event to many SSE viewers
        http="httptools",
        proxy_headers=False,  # we read X-Forwarded-For ourselves, from trusted proxies only
        forwarded_allow_ips=forwarded,
        server_header=False,
        date_header=True,
        timeout_graceful_shutdown=5,
    )
    return 0


def _check_roles(config: Config, roles: list[str]) -> None:
    unknown = [r for r in roles if r not in config.roles]
    if unknown:
        known = ", ".join(sorted(config.roles)) or "none defined"
        raise AuthError(f"no role {unknown[0]!r} in {config.path} (roles: {known})")


def cmd_user_add(args: argparse.Namespace) -> int:
    config = _config(args)
    _check_roles(config, args.role)
    password = None if args.sso else _read_password(args)
    auth = _auth(config)
    user = auth.add_user(args.name, args.role, password)
    how = "auth proxy only" if args.sso else "password"
    print(f"added {user.name} (roles: {', '.join(user.roles)}; sign-in: {how})")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    auth = _auth(_config(args))
    auth.set_password(args.name, _read_password(args))
    print(f"password set for {args.name}; their sessions were ended")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    auth = _auth(_config(args))
    for u in auth.users():
        flags = [] if u.has_password else ["sso"]
        if u.disabled:
            flags.append("disabled")
        extra = f"  ({', '.join(flags)})" if flags else ""
        print(f"{u.name}\t{','.join(u.roles)}{extra}")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    _auth(_config(args)).remove_user(args.name)
    print(f"removed {args.name}; their sessions and tokens no longer work")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    _auth(_config(args)).set_disabled(args.name, args.disabled)
    if args.disabled:
        print(f"disabled {args.name}; their sessions, tokens and live follows stop working")
    else:
        print(f"enabled {args.name}")
    return 0


def cmd_user_roles(args: argparse.Namespace) -> int:
    config = _config(args)
    _check_roles(config, args.role)
    user = _auth(config).set_roles(args.name, args.role)
    print(f"{user.name} now has roles: {', '.join(user.roles)} (live follows re-checked)")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    seconds = None if args.expires == "never" else parse_duration(args.expires)
    token, info = _auth(_config(args)).create_token(args.user, seconds)
    until = _when(info.expires) if info.expires else "never"
    print(token)
    print(
        f"token id {info.id} for {info.user}, expires {until}; it is shown only now",
        file=sys.stderr,
    )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    now = time.time()
    for t in _auth(_config(args)).tokens(args.user):
        state = "revoked" if t.revoked else ("expired" if t.expires and t.expires < now else "ok")
        used = _when(t.last_used) if t.last_used else "never"
        exp = _when(t.expires) if t.expires else "never"
        print(f"{t.id}\t{t.user}\t{state}\texpires {exp}\tlast used {used}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _auth(_config(args)).revoke_token(args.id)
    print("revoked")
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
