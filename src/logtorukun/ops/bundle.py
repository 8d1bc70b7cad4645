"""Lay the gate out as a directory a worker's own Python runs with nothing else.

The gate is standard-library only; installing it on a worker is writing one directory
(root's, not writable by the gate user): an entry script, the package's sources, and
their bytecode compiled by the worker's own Python (the gate user cannot write
`__pycache__`, so without it every start would compile the gate again). The forced
command runs the entry with `python3 -IS` (isolated, no site-packages): nothing on
the worker's import path can shadow the gate, and no `runpy` or `zipimport` stands
between sshd and the gate's first line (the same gate as a zipapp takes nearly twice
the CPU time of a one-shot `tail`: docs/benchmarks.md). The
files are byte-for-byte reproducible (hash-checked bytecode, no timestamps), so an
operator (or a test) can compare a worker's copy with a fresh build. How a build is
put in place and switched to atomically is ops/gate_install.py.
"""

from __future__ import annotations

import hashlib
import marshal
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import logtorukun
import logtorukun.gate

__all__ = ["GATE_ENTRY", "GateBuild", "file_mode", "gate_build", "gate_command", "gate_sources"]

DEFAULT_PYTHON = "/usr/bin/python3"
GATE_ENTRY = "logtorukun-gate.py"  # the script the forced command runs, in the gate's directory

# The top-level package is the web/CLI side and may import third-party modules, so
# the gate gets a stub instead of the real `logtorukun/__init__.py`: the gate
# imports nothing of the rest of the package (tests/test_layering.py holds it).
_PACKAGE_INIT = '"""logtorukun, gate only."""\n\n__version__ = {version!r}\n'

# The forced command names the entry through a symlink that an upgrade switches
# (ops/gate_install.py): the entry resolves it once and puts the real directory of its
# own build (BUILD, the directory's name) on sys.path, so every module this process
# imports, now or hours later in a bridge, comes from the build it started in. Should
# the link be switched between Python opening this file and the realpath below, the
# sibling named BUILD is this file's own directory. The directory is held open until
# exit: that is how `worker setup` tells a build still in use from one it may delete.
# It goes *after* the standard library on sys.path (-I puts nothing of the
# script's own there): no file in it can shadow a standard module. A request served on
# one thread (no `threading` loaded: no thread can exist) ends with os._exit once the
# gate is done: it writes with os.write and closes its audit file itself, so the
# interpreter's teardown (every module and object freed one by one, about 2 ms of a
# one-shot's CPU) has nothing left to do. A bridge exits normally.
_ENTRY = (
    "#!{python} -IS\n"
    '"""logtorukun-gate: the forced command runs this file with `python3 -IS`."""\n'
    "\n"
    "import os\n"
    "import sys\n"
    "\n"
    'BUILD = "{build}"\n'
    "\n"
    'here = os.path.realpath(__file__).rpartition("/")[0]\n'
    'parent, _, name = here.rpartition("/")\n'
    'if name != BUILD and os.path.isdir(parent + "/" + BUILD):\n'
    '    here = parent + "/" + BUILD\n'
    "pin = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)\n"
    "sys.path.append(here)\n"
    "\n"
    "from logtorukun.gate.__main__ import main\n"
    "\n"
    "code = main()\n"
    'if "threading" not in sys.modules:\n'
    "    try:\n"
    "        sys.stdout.flush()\n"
    "        sys.stderr.flush()\n"
    "    except OSError:\n"
    "        pass\n"
    "    os._exit(code)\n"
    "sys.exit(code)\n"
)

# Run by the worker's Python: its own magic number and cache tag (`cpython-311`), so
# the bytecode is what that Python looks for. Checked hash-based pycs: reproducible,
# and a source edited after install is compiled afresh, never run stale.
_COMPILE = """
import importlib.util, marshal, sys
sources = marshal.loads(sys.stdin.buffer.read())
out = {}
for name, source in sources.items():
    code = compile(source, name, "exec", dont_inherit=True)
    head = importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
    pyc = head + importlib.util.source_hash(source) + marshal.dumps(code)
    out[importlib.util.cache_from_source(name)] = pyc
sys.stdout.buffer.write(marshal.dumps(out))
"""

# What may appear in a path inside an authorized_keys `command="..."`. sshd hands that
# string to the user's shell, so anything a shell or the key-options parser would
# interpret (blanks, quotes, backslash, $, ;, globs, ...) is refused, not escaped.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+,:@%=/-]*", re.ASCII)


def gate_sources() -> dict[str, bytes]:
    """Relative path -> content of every source file of the gate (and nothing else)."""
    gate_dir = Path(logtorukun.gate.__file__).resolve().parent
    files: dict[str, bytes] = {
        "logtorukun/__init__.py": _PACKAGE_INIT.format(version=logtorukun.__version__).encode(),
    }
    for path in sorted(gate_dir.rglob("*.py")):
        rel = path.relative_to(gate_dir)
        if "__pycache__" in rel.parts:
            continue
        files["logtorukun/gate/" + rel.as_posix()] = path.read_bytes()
    if "logtorukun/gate/__init__.py" not in files:
        raise RuntimeError(f"no gate package found at {gate_dir}")
    return files


@dataclass(frozen=True)
class GateBuild:
    """One build of the gate: its files, and its name (a hash of them) on the worker."""

    id: str  # 16 hex digits; the entry names it as BUILD
    files: dict[str, bytes]  # relative path -> content: entry, sources, bytecode


def gate_build(python: str = DEFAULT_PYTHON) -> GateBuild:
    """Every file of the gate's directory: the entry script, the sources and their
    bytecode, compiled by `python` (the worker's interpreter), and the build's id: the
    SHA-256 of all of them with the entry's BUILD left empty (16 hex digits)."""
    _check_path("python", python)
    sources = gate_sources()
    try:
        done = subprocess.run(
            [python, "-IS", "-c", _COMPILE],
            input=marshal.dumps(sources),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except OSError as exc:
        raise RuntimeError(f"cannot run {python} to compile the gate: {exc}") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{python} could not compile the gate: {err[-1] if err else '?'}")
    pycs = marshal.loads(done.stdout)  # noqa: S302 (our own child, the worker's Python)
    if not isinstance(pycs, dict) or set(map(_source_of, pycs)) != set(sources):
        raise RuntimeError(f"{python} did not compile every gate module")
    files = {**sources, **pycs}
    digest = hashlib.sha256()
    unnamed = _ENTRY.format(python=python, build="").encode()
    for rel, data in sorted({GATE_ENTRY: unnamed, **files}.items()):
        digest.update(b"%s\0%o\0%d\0" % (rel.encode(), file_mode(rel), len(data)) + data)
    build = digest.hexdigest()[:16]
    entry = _ENTRY.format(python=python, build=build).encode()
    return GateBuild(build, {GATE_ENTRY: entry, **files})


def _source_of(pyc: str) -> str:
    """`a/__pycache__/b.cpython-311.pyc` -> `a/b.py`."""
    head, _, name = pyc.rpartition("/__pycache__/")
    return f"{head}/{name.split('.')[0]}.py"


def file_mode(rel: str) -> int:
    """The entry script is executable (it has a shebang); the rest is only read."""
    return 0o755 if rel == GATE_ENTRY else 0o644


def gate_command(entry: Path, policy: Path, *, python: str = DEFAULT_PYTHON) -> str:
    """The `command="..."` of a worker's authorized_keys line that runs the gate's entry.

    Paths are checked rather than quoted: sshd passes the string to the user's
    shell, and a path that needs quoting has no business in a forced command.
    """
    _check_path("python", python)
    _check_path("gate", str(entry))
    _check_path("policy", str(policy))
    return f"{python} -IS {entry} --policy {policy}"


def _check_path(what: str, value: str) -> None:
    if _SAFE_PATH.fullmatch(value):
        return
    if not value.startswith("/"):
        raise ValueError(f"{what} path must be absolute: {value!r}")
    bad = next(c for c in value if not _SAFE_PATH.fullmatch("/" + c))
    raise ValueError(
        f"{what} path {value!r} contains {bad!r}: a forced command allows only"
        " letters, digits and . _ + , : @ % = / - in paths"
    )
