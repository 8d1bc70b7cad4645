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
operator (or a test) can compare a worker's copy with a fresh build.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import re
import subprocess
import tempfile
from pathlib import Path

import logtorukun
import logtorukun.gate

__all__ = ["GATE_ENTRY", "build_gate", "gate_command", "gate_files", "gate_sources"]

DEFAULT_PYTHON = "/usr/bin/python3"
GATE_ENTRY = "logtorukun-gate.py"  # the script the forced command runs, in the gate's directory

# The top-level package is the web/CLI side and may import third-party modules, so
# the gate gets a stub instead of the real `logtorukun/__init__.py`: the gate
# imports nothing of the rest of the package (tests/test_layering.py holds it).
_PACKAGE_INIT = '"""logtorukun, gate only."""\n\n__version__ = {version!r}\n'

# The directory goes *after* the standard library on sys.path (-I puts nothing of the
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
    'sys.path.append(__file__.rpartition("/")[0])\n'
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


def gate_files(python: str = DEFAULT_PYTHON) -> dict[str, bytes]:
    """Relative path -> content of every file of the gate's directory: the entry script,
    the sources and their bytecode, compiled by `python` (the worker's interpreter)."""
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
    entry = _ENTRY.format(python=python).encode()
    return {GATE_ENTRY: entry, **sources, **pycs}


def _source_of(pyc: str) -> str:
    """`a/__pycache__/b.cpython-311.pyc` -> `a/b.py`."""
    head, _, name = pyc.rpartition("/__pycache__/")
    return f"{head}/{name.split('.')[0]}.py"


def file_mode(rel: str) -> int:
    """The entry script is executable (it has a shebang); the rest is only read."""
    return 0o755 if rel == GATE_ENTRY else 0o644


def build_gate(dest: Path, *, python: str = DEFAULT_PYTHON) -> Path:
    """Write the gate's directory at `dest` and return the entry script's path.

    Each file is written to a temporary name beside it and renamed into place, so a
    gate starting meanwhile reads whole files; files of an older build that this one
    no longer has are removed.
    """
    dest = Path(dest)
    files = gate_files(python)
    for rel, data in sorted(files.items()):
        path = dest / rel
        rel_dir = path.parent.relative_to(dest)
        for d in (*reversed(rel_dir.parents), rel_dir):
            (dest / d).mkdir(parents=True, exist_ok=True)
            # whatever root's umask: the gate user reads it all, and writes none of it
            os.chmod(dest / d, 0o755)  # noqa: S103
        _write_atomic(path, data, file_mode(rel))
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(f.startswith(rel + "/") for f in files):
                path.rmdir()
        elif rel not in files:
            path.unlink()
    return dest / GATE_ENTRY


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
