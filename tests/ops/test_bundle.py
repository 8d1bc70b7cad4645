"""The gate zipapp: reproducible, self-contained, runnable by a bare system Python."""

from __future__ import annotations

import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from logtorukun.ops.bundle import build_gate_zipapp, gate_command

SYSTEM_PYTHON = "/usr/bin/python3"


def test_build_twice_gives_identical_bytes(tmp_path: Path) -> None:
    a = build_gate_zipapp(tmp_path / "a.pyz")
    b = build_gate_zipapp(tmp_path / "b.pyz")
    assert a.read_bytes() == b.read_bytes()
    # rebuilding in place replaces the file atomically and leaves no temp file behind
    build_gate_zipapp(a)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pyz", "b.pyz"]


def test_shebang_mode_and_contents(tmp_path: Path) -> None:
    app = build_gate_zipapp(tmp_path / "gate.pyz", python="/opt/py/bin/python3.11")
    assert app.read_bytes().startswith(b"#!/opt/py/bin/python3.11 -IS\n")
    assert stat.S_IMODE(app.stat().st_mode) == 0o755
    with zipfile.ZipFile(app) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert "__main__.py" in names
    assert "logtorukun/__init__.py" in names
    assert "logtorukun/gate/__init__.py" in names
    outside = [
        n
        for n in names
        if n not in ("__main__.py", "logtorukun/__init__.py", "logtorukun/__init__.pyc")
    ]
    assert all(n.startswith("logtorukun/gate/") and n.endswith((".py", ".pyc")) for n in outside), (
        names
    )
    # Bytecode ships beside every module (zipimport never caches), never without source.
    assert {n[:-1] for n in names if n.endswith(".pyc")} == {
        n for n in names if n.endswith(".py") and n != "__main__.py"
    }
    gate_dir = Path(__file__).resolve().parents[2] / "src" / "logtorukun" / "gate"
    expected = {f"logtorukun/gate/{p.name}" for p in gate_dir.glob("*.py")}
    assert expected <= set(names)


def test_runs_isolated_with_system_python(tmp_path: Path) -> None:
    app = build_gate_zipapp(tmp_path / "gate.pyz")
    probe = (
        "import sys, logtorukun, logtorukun.gate;"
        "mods = sorted(m for m in sys.modules if m.startswith('logtorukun'));"
        "print(logtorukun.gate.__file__); print(sys.flags.isolated, sys.flags.no_site);"
        "print(' '.join(mods))"
    )
    # the archive on sys.path, as it is when the zipapp runs, but under -IS
    out = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-c", f"import sys; sys.path.insert(0, {str(app)!r}); {probe}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    where, flags, mods = out.stdout.splitlines()
    assert where in (f"{app}/logtorukun/gate/__init__.py", f"{app}/logtorukun/gate/__init__.pyc")
    assert flags == "1 1"
    assert mods.split() == ["logtorukun", "logtorukun.gate"]


def test_zipapp_executes_gate_main(tmp_path: Path) -> None:
    """Run through the shebang with no request: the gate must refuse, not crash on import."""
    app = build_gate_zipapp(tmp_path / "gate.pyz")
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(app), "--policy", str(tmp_path / "missing.toml")],
        capture_output=True,
        env=env,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    assert out.returncode not in (0, 1), out  # a documented refusal code, not a crash
    assert out.stderr.strip(), "a refusal states its reason on stderr"


def test_gate_command() -> None:
    cmd = gate_command(Path("/opt/lt/gate.pyz"), Path("/etc/logtorukun/policy.toml"))
    assert cmd == "/usr/bin/python3 -IS /opt/lt/gate.pyz --policy /etc/logtorukun/policy.toml"
    assert gate_command(Path("/g.pyz"), Path("/p.toml"), python="/usr/bin/python3.11") == (
        "/usr/bin/python3.11 -IS /g.pyz --policy /p.toml"
    )


@pytest.mark.parametrize(
    "zipapp",
    [
        "gate.pyz",  # relative
        "/opt/my gate.pyz",
        "/opt/gate.pyz\n",
        '/opt/ga"te.pyz',
        "/opt/ga'te.pyz",
        "/opt/$(id).pyz",
        "/opt/a;b.pyz",
        "/opt/a\\b.pyz",
        "/opt/\x7f.pyz",
        "/opt/\u00e9.pyz",
    ],
)
def test_gate_command_refuses_unsafe_paths(zipapp: str) -> None:
    with pytest.raises(ValueError, match="zipapp path"):
        gate_command(Path(zipapp), Path("/etc/logtorukun/policy.toml"))


def test_gate_command_refuses_unsafe_python() -> None:
    with pytest.raises(ValueError, match="python path must be absolute"):
        gate_command(Path("/g.pyz"), Path("/p.toml"), python="python3")
    with pytest.raises(ValueError, match="python path"):
        build_gate_zipapp(Path("/tmp/unused.pyz"), python="/usr/bin/python3 -E")
