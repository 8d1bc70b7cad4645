"""Run every benchmark module in bench/ that has a `main()` (no arguments), in turn."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def run() -> int:
    only = set(sys.argv[1:])
    failed = 0
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or (only and info.name not in only):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        main = getattr(module, "main", None)
        if main is None:
            continue
        print(f"\n## bench.{info.name}\n", flush=True)
        sys.argv = [f"bench.{info.name}"]  # each module parses its own (empty) arguments
        failed += 1 if main() else 0
    return 1 if failed else 0


sys.exit(run())
