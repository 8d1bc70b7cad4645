"""`logtorukun`: one entry point; each part of the system registers its own subcommands.

A subcommand module exposes `register(subparsers)` and sets `func` on its parsers; the
function gets the parsed args and returns an exit code. Errors the user can fix are
`UserError`s and print as one line.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..errors import UserError

# Each module adds its own subcommands; order is the order of `logtorukun --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "logtorukun.cli.serve",
    "logtorukun.cli.logs",
    "logtorukun.cli.audit_trail",
    "logtorukun.cli.database",
    "logtorukun.cli.operator",
)


class Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean" for a mistyped subcommand (`logtorukun tial`)."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            near = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (commands: {', '.join(choices)})"
            message = f"unknown command {m.group(1)!r}{hint}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="logtorukun",
        description="Read worker logs over SSH: web server, client and operator tools.",
    )
    parser.add_argument("--version", action="version", version=f"logtorukun {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="server config (default: $LOGTORUKUN_CONFIG or /etc/logtorukun/server.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _config_everywhere(parser)
    return parser


def _config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept `--config FILE` after any subcommand too (`logtorukun audit verify --config
    F`), as the contract says; SUPPRESS keeps a value given before the subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument(
                        "--config",
                        metavar="FILE",
                        default=argparse.SUPPRESS,
                        help="server config (as before the subcommand)",
                    )
                _config_everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except UserError as exc:
        print(f"logtorukun: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
