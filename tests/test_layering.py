"""The layering of src/logtorukun, read from the imports with `ast` (README, "What is
where", draws the same arrows):

    cli -> web, ops, audit, client, config          (only cli imports web or ops)
    web -> client, audit, config, gate (shared)      ops -> web (its package only)
    config -> client.settings                         client -> gate (shared) only
    gate -> the standard library only

"gate (shared)" is the part of the gate the other side may use: the frame format
(protocol.py), the request vocabulary (vocabulary.py), the glob matcher (globs.py), the
audit record (record.py) and the line timestamps (stamps.py, for the merged view).
No import cycle between modules anywhere, and no module imports another's private
(`_name`) names.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

import logtorukun

PKG = Path(logtorukun.__file__).resolve().parent
ROOT = "logtorukun"
SHARED_GATE = {f"{ROOT}.gate.{m}" for m in ("protocol", "vocabulary", "globs", "record", "stamps")}
# _sha2: CPython 3.12+ names its built-in SHA-256 module so (3.11: _sha256).
STDLIB = set(sys.stdlib_module_names) | {"__future__", "_sha2"}


def module_name(path: Path, base: Path = PKG, root: str = ROOT) -> str:
    parts = [root, *path.relative_to(base).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(
    path: Path, modules: set[str], base: Path = PKG, root: str = ROOT
) -> list[tuple[int, str, bool]]:
    """(line, imported module, for the type checker only) for every import in the file.

    `from pkg import name` counts as importing `pkg.name` when that is a module.
    """
    me = module_name(path, base, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        checker = _type_checking_only(node, parents)
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, checker) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                target = ".".join([*up, node.module] if node.module else up)
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            out += [(node.lineno, t, checker) for t in subs or [target]]
    return out


def graph(base: Path = PKG, root: str = ROOT) -> dict[str, list[tuple[int, str, bool]]]:
    files = {module_name(p, base, root): p for p in base.rglob("*.py")}
    modules = set(files)
    return {name: imports(path, modules, base, root) for name, path in sorted(files.items())}


@functools.cache
def project() -> dict[str, list[tuple[int, str, bool]]]:
    return graph()


def cycles(g: dict[str, list[tuple[int, str, bool]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), run-time imports."""
    edges = {m: sorted({t for _, t, chk in deps if t in g and not chk}) for m, deps in g.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def part(module: str) -> str:
    """The layer a module belongs to: gate, client, web, ops, audit, cli, or the module."""
    rest = module.removeprefix(ROOT + ".")
    return rest.split(".")[0] if module != ROOT else ROOT


def violations(g: dict[str, list[tuple[int, str, bool]]]) -> list[str]:
    bad: list[str] = []
    for mod, deps in g.items():
        me = part(mod)
        for line, target, _ in deps:
            where = f"{mod}:{line} imports {target}"
            ours = target == ROOT or target.startswith(ROOT + ".")
            if not ours:
                if me == "gate" and target.split(".")[0] not in STDLIB:
                    bad.append(f"{where}: the gate is standard library only")
                continue
            them = part(target)
            if them == me:
                continue
            if me == "gate":
                bad.append(f"{where}: the gate imports nothing of the rest")
            elif them == "gate" and target not in SHARED_GATE and me != "ops":
                bad.append(f"{where}: outside the gate only its shared modules are used")
            elif me == "client" and them not in ("gate", "errors"):
                bad.append(f"{where}: the client depends on the gate's shared modules only")
            elif them in ("web", "ops") and me != "cli":
                if me == "ops" and target == f"{ROOT}.web":
                    continue  # the web package's public names, not its modules
                bad.append(f"{where}: only cli imports {them}")
            elif them == "cli" and mod != f"{ROOT}.__main__":
                bad.append(f"{where}: nothing but `python -m logtorukun` imports cli")
    return bad


def test_the_graph_is_read() -> None:
    g = project()
    assert f"{ROOT}.web.api" in g and f"{ROOT}.gate.runner" in g
    deps = {t for _, t, _ in g[f"{ROOT}.web.api"]}
    assert f"{ROOT}.web.guard" in deps and "fastapi" in deps


def test_no_import_cycles() -> None:
    assert cycles(project()) == []


def test_layers_point_one_way() -> None:
    problems = violations(project())
    assert not problems, "\n".join(problems)


def private_imports(base: Path = PKG) -> list[str]:
    """`from .x import _name`: one module reaching for another's private name."""
    bad = []
    for path in sorted(base.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or ROOT in (node.module or "")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        rel = path.relative_to(base)
                        bad.append(f"{rel}:{node.lineno} imports {alias.name} of {node.module}")
    return bad


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"a.py": "from . import b", "b.py": "from .a import x"}, "cycle"),
        ({"gate/__init__.py": "", "gate/x.py": "import fastapi"}, "standard library only"),
        ({"gate/__init__.py": "", "gate/x.py": "from ..web import app"}, "imports nothing"),
        ({"client/__init__.py": "", "client/x.py": "from ..gate import runner"}, "shared"),
        ({"client/__init__.py": "", "client/x.py": "from ..config import C"}, "shared modules"),
        ({"audit/__init__.py": "", "audit/x.py": "from ..web.auth import A"}, "only cli"),
        ({"ops/__init__.py": "", "ops/x.py": "from ..web.auth import A"}, "only cli"),
        ({"ops/__init__.py": "", "ops/x.py": "from .y import _helper"}, "private"),
    ],
)
def test_the_checker_would_notice(tmp_path: Path, files: dict[str, str], problem: str) -> None:
    base = tmp_path / ROOT
    for name, text in {"__init__.py": "", **files}.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text + "\n")
    g = graph(base)
    if problem == "cycle":
        found = [" ".join(c) for c in cycles(g)]
    elif problem == "private":
        found = [f"{p} (private)" for p in private_imports(base)]
    else:
        found = violations(g)
    assert found and (problem == "cycle" or any(problem in f for f in found)), found
