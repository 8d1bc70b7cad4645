"""The installed gate: reproducible, self-contained, compiled for the worker's Python,
runnable by a bare system Python without runpy or zipimport."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from logtorukun.ops.bundle import GATE_ENTRY, gate_build, gate_command
from logtorukun.ops.gate_install import build_gate

SYSTEM_PYTHON = "/usr/bin/python3"


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_build_twice_gives_identical_files(tmp_path: Path) -> None:
    a = build_gate(tmp_path / "a")
    b = build_gate(tmp_path / "b")
    assert a == tmp_path / "a" / GATE_ENTRY
    assert _tree(a.parent) == _tree(b.parent)
    # rebuilding in place leaves no temporary file, and removes what the build lacks
    (a.parent / "logtorukun/gate/stale.py").write_text("raise SystemExit('stale')\n")
    build_gate(a.parent)
    assert _tree(a.parent) == _tree(b.parent)


def test_entry_modes_and_contents(tmp_path: Path) -> None:
    entry = build_gate(tmp_path / "gate", python=SYSTEM_PYTHON)
    assert entry.read_bytes().startswith(f"#!{SYSTEM_PYTHON} -IS\n".encode())
    tree = _tree(entry.parent)
    assert tree[GATE_ENTRY][1] == 0o755
    assert {mode for name, (_, mode) in tree.items() if name != GATE_ENTRY} == {0o644}
    dirs = [entry.parent, *(p for p in entry.parent.rglob("*") if p.is_dir())]
    assert {stat.S_IMODE(d.stat().st_mode) for d in dirs} == {0o755}
    gate_dir = Path(__file__).resolve().parents[2] / "src" / "logtorukun" / "gate"
    sources = {f"logtorukun/gate/{p.name}" for p in gate_dir.glob("*.py")}
    assert {n for n in tree if n.endswith(".py")} == {
        GATE_ENTRY,
        "logtorukun/__init__.py",
    } | sources
    # Bytecode beside every module, compiled by the worker's Python (its cache tag).
    tag = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pycs = {n for n in tree if n.endswith(".pyc")}
    assert pycs == {
        f"{n.rpartition('/')[0]}/__pycache__/{n.rpartition('/')[2][:-3]}.{tag}.pyc"
        for n in tree
        if n.endswith(".py") and n != GATE_ENTRY
    }


def test_bytecode_is_used_and_a_changed_source_wins(tmp_path: Path) -> None:
    """The gate user cannot write __pycache__: the shipped bytecode must be what Python
    loads; and since it is hash-checked, an edited source is never shadowed by it."""
    entry = build_gate(tmp_path / "gate", python=SYSTEM_PYTHON)
    root = entry.parent
    probe = (
        f"import sys; sys.path.append({str(root)!r}); sys.dont_write_bytecode = True;"
        "import logtorukun.gate.errors as m; print(m.__spec__.cached);"
        "print(m.__spec__.loader.get_code('logtorukun.gate.errors').co_filename)"
    )

    def run() -> list[str]:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-IS", "-X", "importtime", "-c", probe],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()

    cached, filename = run()
    assert Path(cached).read_bytes()[4:8] == (0b11).to_bytes(4, "little")  # checked hash
    assert filename == str(root / "logtorukun/gate/errors.py")
    source = root / "logtorukun/gate/errors.py"
    source.write_text(source.read_text() + "\nEDITED = True\n")
    check = f"import sys; sys.path.append({str(root)!r}); import logtorukun.gate.errors as m;"
    out = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-c", check + "print(m.EDITED)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout == "True\n", out.stderr


def test_runs_isolated_with_system_python(tmp_path: Path) -> None:
    entry = build_gate(tmp_path / "gate")
    probe = (
        "import sys, logtorukun, logtorukun.gate;"
        "mods = sorted(m for m in sys.modules if m.startswith('logtorukun'));"
        "print(logtorukun.gate.__file__); print(sys.flags.isolated, sys.flags.no_site);"
        "print(' '.join(mods)); print(sys.path.index(sys.argv[1]) == len(sys.path) - 1)"
    )
    out = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-IS",
            "-c",
            f"import sys; sys.path.append(sys.argv[1]); {probe}",
            str(entry.parent),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    where, flags, mods, last = out.stdout.splitlines()
    assert where == f"{entry.parent}/logtorukun/gate/__init__.py"
    assert flags == "1 1"
    assert mods.split() == ["logtorukun", "logtorukun.gate"]
    assert last == "True"


def test_entry_executes_gate_main(tmp_path: Path) -> None:
    """Run through the shebang with no request: the gate must refuse, not crash on import."""
    entry = build_gate(tmp_path / "gate")
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(entry), "--policy", str(tmp_path / "missing.toml")],
        capture_output=True,
        env=env,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    assert out.returncode not in (0, 1), out  # a documented refusal code, not a crash
    assert out.stderr.strip(), "a refusal states its reason on stderr"


def test_the_entry_cannot_be_shadowed_from_the_current_directory(tmp_path: Path) -> None:
    """-I keeps the working directory and the script's own off sys.path's front: a
    `logtorukun` or `os` there is never imported."""
    entry = build_gate(tmp_path / "gate")
    cwd = tmp_path / "cwd"
    (cwd / "logtorukun").mkdir(parents=True)
    (cwd / "logtorukun/__init__.py").write_text("raise SystemExit('shadowed')\n")
    (cwd / "os.py").write_text("raise SystemExit('shadowed')\n")
    out = subprocess.run(
        [SYSTEM_PYTHON, "-IS", str(entry), "--version"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
        timeout=30,
        cwd=cwd,
        check=False,
    )
    assert (out.returncode, out.stderr) == (0, b"")
    assert out.stdout.startswith(b"logtorukun-gate ")


def test_gate_build_needs_the_workers_python(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot run /nonexistent/python3"):
        gate_build("/nonexistent/python3")


def test_gate_command() -> None:
    cmd = gate_command(Path("/opt/lt/gate/g.py"), Path("/etc/logtorukun/policy.toml"))
    assert cmd == "/usr/bin/python3 -IS /opt/lt/gate/g.py --policy /etc/logtorukun/policy.toml"
    assert gate_command(Path("/g.py"), Path("/p.toml"), python="/usr/bin/python3.11") == (
        "/usr/bin/python3.11 -IS /g.py --policy /p.toml"
    )


@pytest.mark.parametrize(
    "entry",
    [
        "gate.py",  # relative
        "/opt/my gate.py",
        "/opt/gate.py\n",
        '/opt/ga"te.py',
        "/opt/ga'te.py",
        "/opt/$(id).py",
        "/opt/a;b.py",
        "/opt/a\\b.py",
        "/opt/\x7f.py",
        "/opt/\u00e9.py",
    ],
)
def test_gate_command_refuses_unsafe_paths(entry: str) -> None:
    with pytest.raises(ValueError, match="gate path"):
        gate_command(Path(entry), Path("/etc/logtorukun/policy.toml"))


def test_gate_command_refuses_unsafe_python() -> None:
    with pytest.raises(ValueError, match="python path must be absolute"):
        gate_command(Path("/g.py"), Path("/p.toml"), python="python3")
    with pytest.raises(ValueError, match="python path"):
        build_gate(Path("/tmp/unused"), python="/usr/bin/python3 -E")
