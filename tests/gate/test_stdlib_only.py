"""The gate is standard library only: it must run on a worker's bare Python 3.11+."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import logtorukun.gate
from logtorukun.ops.bundle import GATE_ENTRY
from logtorukun.ops.gate_install import build_gate
from tests.support.sshd import SYSTEM_PYTHON

GATE_DIR = Path(logtorukun.gate.__file__).resolve().parent
SRC = GATE_DIR.parents[1]
GATE_FILES = sorted(p for p in GATE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
# _sha2: CPython 3.12+ names its built-in SHA-256 module so (3.11: _sha256).
ALLOWED = set(sys.stdlib_module_names) | {"__future__", "_sha2"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Absolute top-level module names imported anywhere in the file (incl. functions)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.append((node.lineno, "<__import__>"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
        ):
            found.append((node.lineno, "<import_module>"))
    return found


def test_there_are_gate_files() -> None:
    names = {p.name for p in GATE_FILES}
    assert {"__main__.py", "grammar.py", "runner.py", "paths.py", "bridge.py"} <= names


@pytest.mark.parametrize("path", GATE_FILES, ids=lambda p: p.name)
def test_every_import_is_standard_library(path: Path) -> None:
    bad = []
    for line, name in imports_of(path):
        top = name.split(".")[0]
        if top not in ALLOWED:
            bad.append(f"{path.name}:{line}: imports {name}")
    assert not bad, "the gate must be standard library only:\n" + "\n".join(bad)


def test_the_checker_would_notice(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text(
        textwrap.dedent("""
        import os
        from . import grammar
        def f():
            import asyncssh
            from logtorukun.web import app
            return __import__("yaml")
    """)
    )
    tops = [name.split(".")[0] for _, name in imports_of(p)]
    assert [t for t in tops if t not in ALLOWED] == ["asyncssh", "logtorukun", "<__import__>"]


IMPORT_ALL = """
import importlib, pkgutil, sys
import logtorukun.gate
import logtorukun.gate.__main__
for m in pkgutil.iter_modules(logtorukun.gate.__path__):
    importlib.import_module("logtorukun.gate." + m.name)
std = set(sys.stdlib_module_names)
foreign = sorted(
    name for name, mod in sys.modules.items()
    if name.split(".")[0] not in std and name not in ("__main__", "logtorukun")
    and not name.startswith("logtorukun.gate")
)
print(sorted(n for n in sys.modules if n.startswith("logtorukun")))
print("FOREIGN", foreign)
"""


@pytest.mark.parametrize("where", ["installed", "src"])
def test_imports_under_isolated_system_python(tmp_path: Path, where: str) -> None:
    """`/usr/bin/python3 -IS` with only the gate's directory (or `src`) on the path: no
    site-packages."""
    if where == "installed":
        path = build_gate(tmp_path / "gate", python=SYSTEM_PYTHON).parent
    else:
        path = SRC
    code = f"import sys; sys.path.insert(0, {str(path)!r})\n" + IMPORT_ALL
    out = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "FOREIGN []" in out.stdout, out.stdout
    assert "'logtorukun.gate.__main__'" in out.stdout and "'logtorukun.gate.bridge'" in out.stdout
    loaded = out.stdout.splitlines()[0]
    assert "logtorukun.web" not in loaded and "logtorukun.client" not in loaded


def test_the_installed_gate_holds_the_gate_and_nothing_else(tmp_path: Path) -> None:
    root = build_gate(tmp_path / "gate", python=SYSTEM_PYTHON).parent
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert all(
        n == GATE_ENTRY
        or n.startswith(
            ("logtorukun/__init__.py", "logtorukun/__pycache__/__init__.", "logtorukun/gate/")
        )
        for n in names
    ), names
