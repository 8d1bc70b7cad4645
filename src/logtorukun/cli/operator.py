"""The operator subcommands: `demo`, `worker setup|remove`, `doctor`, `ca`.

Registered from one module so `cli.COMMAND_MODULES` needs one line for all of ops;
each command's module is imported only here, none of them at gate start-up.
"""

from __future__ import annotations

import argparse
import importlib

_MODULES = (
    "logtorukun.ops.demo",
    "logtorukun.ops.worker",
    "logtorukun.ops.doctor",
    "logtorukun.ops.ca",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not written yet: the others still work
        module.register(sub)
