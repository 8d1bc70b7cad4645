"""Pack the gate into one executable file, so a worker needs nothing but its own Python.

The gate is standard-library only; shipping it as a zipapp means installing it on a
worker is copying one file, and the forced command runs it with `python3 -IS`
(isolated, no site-packages): nothing on the worker's import path can shadow it, and
it starts fast. The archive is byte-for-byte reproducible, so an operator (or a
test) can compare a worker's copy with a fresh build by hash.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import marshal
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path

import logtorukun
import logtorukun.gate

__all__ = ["build_gate_zipapp", "gate_command", "gate_sources"]

DEFAULT_PYTHON = "/usr/bin/python3"

# Zip's epoch: a fixed timestamp keeps builds identical whatever the files' mtimes.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = (stat.S_IFREG | 0o644) << 16

# The top-level package is the web/CLI side and may import third-party modules, so
# the archive gets a stub instead of the real `logtorukun/__init__.py`: the gate
# imports nothing of the rest of the package (tests/test_layering.py holds it).
_PACKAGE_INIT = '"""logtorukun, gate only (zipapp)."""\n\n__version__ = {version!r}\n'

_MAIN = (
    '"""Entry point of the gate zipapp: the forced command runs this."""\n'
    "\n"
    "import sys\n"
    "\n"
    "from logtorukun.gate.__main__ import main\n"
    "\n"
    "sys.exit(main())\n"
)

# What may appear in a path inside an authorized_keys `command="..."`. sshd hands that
# string to the user's shell, so anything a shell or the key-options parser would
# interpret (blanks, quotes, backslash, $, ;, globs, ...) is refused, not escaped.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+,:@%=/-]*", re.ASCII)


def gate_sources() -> dict[str, bytes]:
    """Archive name -> content of every file the zipapp holds (the gate and nothing else)."""
    gate_dir = Path(logtorukun.gate.__file__).resolve().parent
    files: dict[str, bytes] = {
        "__main__.py": _MAIN.encode(),
        "logtorukun/__init__.py": _PACKAGE_INIT.format(version=logtorukun.__version__).encode(),
    }
    for path in sorted(gate_dir.rglob("*.py")):
        rel = path.relative_to(gate_dir)
        if "__pycache__" in rel.parts:
            continue
        files["logtorukun/gate/" + rel.as_posix()] = path.read_bytes()
    if "logtorukun/gate/__init__.py" not in files:
        raise RuntimeError(f"no gate package found at {gate_dir}")
    for name in [n for n in files if n.endswith(".py") and n != "__main__.py"]:
        files[name + "c"] = _pyc(name, files[name])
    return files


def _pyc(name: str, source: bytes) -> bytes:
    """Bytecode beside each source: zipimport never writes a cache, so without it every
    gate start would compile the gate again (about 25 ms). Unchecked-hash pycs need no
    timestamps (the build stays reproducible); a worker whose Python has another magic
    number ignores them and falls back to the source."""
    code = compile(source, name, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def _zipapp_bytes(shebang: bytes, files: dict[str, bytes]) -> bytes:
    # The zip is written after the shebang into one buffer so its offsets count from
    # the start of the file, which keeps `unzip -l` and `zipfile` happy as well.
    buf = io.BytesIO()
    buf.write(shebang)
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _FILE_MODE
            info.create_system = 3  # Unix, whatever platform builds it
            zf.writestr(info, files[name], compresslevel=9)
    return buf.getvalue()


def build_gate_zipapp(dest: Path, *, python: str = DEFAULT_PYTHON) -> Path:
    """Write the gate zipapp to `dest` (mode 0755) and return its path.

    Written to a temporary file in the same directory and renamed into place, so a
    gate that is starting right now runs either the old file or the new one, never
    half of one.
    """
    _check_path("python", python)
    dest = Path(dest)
    data = _zipapp_bytes(f"#!{python} -IS\n".encode(), gate_sources())
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o755)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def gate_command(zipapp: Path, policy: Path, *, python: str = DEFAULT_PYTHON) -> str:
    """The `command="..."` of a worker's authorized_keys line that runs this zipapp.

    Paths are checked rather than quoted: sshd passes the string to the user's
    shell, and a path that needs quoting has no business in a forced command.
    """
    _check_path("python", python)
    _check_path("zipapp", str(zipapp))
    _check_path("policy", str(policy))
    return f"{python} -IS {zipapp} --policy {policy}"


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
