"""Upgrading the gate on a worker (ops/gate_install.py): one build per directory behind
one root-owned link, switched in one rename, against a real sshd.

Two builds of the gate that differ only in a tag are made here: `GATE_VERSION` says
the tag, and every other module, when imported, checks that the package it joins has
the same tag, and fails the import otherwise. So any process that mixes two builds
(a module of one loaded into a process started with the other) fails loudly, and the
tag in HELLO or `sources` says which build a process runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logtorukun.cli import main
from logtorukun.gate import GATE_VERSION
from logtorukun.ops import bundle, worker_plan
from logtorukun.ops.bundle import GATE_ENTRY, GateBuild, gate_build, gate_sources
from logtorukun.ops.gate_install import GateInstall, build_gate
from logtorukun.ops.worker_spec import Layout
from tests.gate.test_bridge import BridgeClient
from tests.ops.worker_box import USER, Box, as_user

REAL_SOURCES = gate_sources()
_CHECK = (
    "\nfrom logtorukun.gate import GATE_VERSION as _JOINED\n"
    "if _JOINED != {version!r}:\n"
    '    raise ImportError(f"mixed gate: {{__name__}} of {version} in a {{_JOINED}} gate")\n'
)


def tagged_sources(tag: str) -> dict[str, bytes]:
    """The gate's sources, tagged: GATE_VERSION is `<version>+<tag>`, and every other
    module refuses to be imported into a gate of another tag."""
    version = f"{GATE_VERSION}+{tag}"
    out: dict[str, bytes] = {}
    for rel, data in REAL_SOURCES.items():
        if rel == "logtorukun/gate/__init__.py":
            text, n = re.subn(
                r'(?m)^GATE_VERSION = ".*"$', f"GATE_VERSION = {version!r}", data.decode()
            )
            assert n == 1
            data = text.encode()
        elif rel.startswith("logtorukun/gate/"):
            data += _CHECK.format(version=version).encode()
        out[rel] = data
    return out


@contextlib.contextmanager
def tagged(monkeypatch: pytest.MonkeyPatch, tag: str) -> Iterator[None]:
    """`worker setup` (and gate_build) builds the `tag` variant meanwhile."""
    with monkeypatch.context() as m:
        m.setattr(bundle, "gate_sources", lambda: tagged_sources(tag))
        m.setattr(worker_plan, "_GATE_CACHE", {})
        yield


def build_of(monkeypatch: pytest.MonkeyPatch, tag: str) -> GateBuild:
    with tagged(monkeypatch, tag):
        return gate_build()


def setup(box: Box, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(box.setup_argv()) == 0
    return capsys.readouterr().out


def snapshot(base: Path) -> dict[str, tuple[int, int, int, float]]:
    """(inode, mode, owner, mtime) of everything under `base`, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [".", *dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_ino, st.st_mode, st.st_uid, st.st_mtime)
    return out


def test_setup_installs_a_build_behind_a_link_converges_and_removes(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    lay.old_zipapp.parent.mkdir(parents=True, exist_ok=True)
    lay.old_zipapp.write_bytes(b"PK old gate")
    out = setup(box, capsys)
    build = gate_build()
    assert f"install gate build {build.id} in {inst.versions}/{build.id}" in out
    assert f"switch {inst.link} -> gate-versions/{build.id} (one rename)" in out
    assert not lay.old_zipapp.exists()
    assert os.readlink(inst.link) == f"gate-versions/{build.id}"
    assert os.lstat(inst.link).st_uid == 0
    assert f'BUILD = "{build.id}"\n'.encode() in lay.gate_entry.read_bytes()
    for p in [inst.versions, *inst.versions.rglob("*")]:
        st = p.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, p
    runs = as_user(USER, "/usr/bin/python3", "-IS", str(lay.gate_entry), "--version")
    assert (runs.returncode, runs.stdout) == (0, f"logtorukun-gate {GATE_VERSION}\n")

    # Converged: a second run writes nothing at all.
    before = snapshot(lay.gate_dir.parent)
    assert "nothing to change" in setup(box, capsys)
    assert snapshot(lay.gate_dir.parent) == before

    # A file planted in the build (by root: the gate user cannot) makes it a damaged
    # copy: the next run puts a whole new copy in its place, under the same name.
    stale = inst.build_dir(build.id) / "logtorukun/gate/old_module.py"
    stale.write_text("raise SystemExit('stale')\n")
    assert main(box.setup_argv("--dry-run")) == 0
    out = capsys.readouterr().out
    assert f"differs from {inst.versions}/{build.id}:\n    logtorukun/gate/old_module.py\n" in out
    out = setup(box, capsys)
    assert f"install gate build {build.id}" in out and "switch" not in out
    assert not stale.exists() and lay.gate_entry.is_file()

    capsys.readouterr()
    assert main(box.remove_argv()) == 0
    assert "(the gate; no other gate user uses it)" in capsys.readouterr().out
    for p in (inst.link, inst.previous, inst.versions):
        assert not os.path.lexists(p), p


def test_what_an_interrupted_switch_left_is_deleted_by_the_next_setup(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    setup(box, capsys)
    # A setup killed inside a switch leaves the new link not yet renamed over the old
    # one, or (without RENAME_EXCHANGE) the old plain directory moved aside.
    name = inst.link.name
    tmp_link = inst.link.with_name(f".{name}.tmp-0123abcd")
    os.symlink(os.readlink(inst.link), tmp_link)
    aside = inst.link.with_name(f".{name}.old-89abcdef")
    (aside / "logtorukun").mkdir(parents=True)
    not_ours = inst.link.with_name(".other.tmp-0123abcd")
    not_ours.symlink_to("nowhere")
    out = setup(box, capsys)
    why = "(left by a setup interrupted while switching the link)"
    assert f"delete {tmp_link} {why}" in out and f"delete {aside} {why}" in out
    assert not os.path.lexists(tmp_link) and not os.path.lexists(aside)
    assert not_ours.is_symlink()  # only what a switch of this link leaves
    assert os.readlink(inst.link) == f"gate-versions/{gate_build().id}"
    assert "nothing to change" in setup(box, capsys)
    not_ours.unlink()


def test_the_gate_user_can_neither_redirect_the_link_nor_plant_a_build(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    setup(box, capsys)
    build = gate_build().id
    mine = box.root / "mine"  # a directory the gate user owns, with a gate of its own
    mine.mkdir()
    shutil.copytree(inst.build_dir(build), mine / "evil")
    subprocess.run(["chown", "-R", USER, str(mine)], check=True)
    attempts = [
        ["ln", "-sfn", str(mine / "evil"), str(inst.link)],
        ["mv", str(inst.link), str(mine / "stolen")],
        ["rm", "-f", str(inst.link)],
        ["mkdir", str(inst.versions / ("0" * 16))],
        ["cp", "-r", str(mine / "evil"), str(inst.versions / ("1" * 16))],
        ["mv", str(inst.build_dir(build)), str(mine / "moved")],
        ["touch", str(inst.build_dir(build) / "logtorukun/gate/x.py")],
        ["cp", "/dev/null", str(inst.build_dir(build) / "logtorukun/gate/runner.py")],
        ["mkdir", str(lay.gate_dir.parent / "gate-previous")],
    ]
    for argv in attempts:
        assert as_user(USER, *argv).returncode != 0, argv
    assert os.readlink(inst.link) == f"gate-versions/{build}"
    assert sorted(p.name for p in inst.versions.iterdir()) == [build]
    assert "nothing to change" in setup(box, capsys)


def test_a_plain_directory_install_becomes_a_link_without_a_missing_moment(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    """The layout before builds: the files straight in .../gate. Setup exchanges the
    directory and the new link in one step; a reader of the entry never misses it."""
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    setup(box, capsys)
    build = gate_build().id
    plain = lay.gate_dir.with_name("plain")
    shutil.copytree(inst.build_dir(build), plain)
    inst.link.unlink()
    shutil.rmtree(inst.versions)
    plain.rename(inst.link)  # as an older release left it

    stop = threading.Event()
    seen = {"ok": 0, "missing": 0}

    def watch() -> None:
        for _ in range(50_000_000):  # bounded; ends when setup is done
            if stop.is_set():
                return
            try:
                os.stat(lay.gate_entry)
                seen["ok"] += 1
            except FileNotFoundError:
                seen["missing"] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = setup(box, capsys)
    finally:
        stop.set()
        watcher.join(30)
    assert f"turn the directory {inst.link} into a link to gate-versions/{build}" in out
    assert seen["missing"] == 0 and seen["ok"] > 0, seen
    assert os.readlink(inst.link) == f"gate-versions/{build}"
    assert [p.name for p in lay.gate_dir.parent.iterdir() if p.name.startswith(".")] == []
    assert "nothing to change" in setup(box, capsys)


def test_an_open_bridge_keeps_its_build_new_sessions_get_the_new_one(
    box: Box, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    log = box.logs / "app.log"
    builds = {tag: build_of(monkeypatch, tag).id for tag in "abc"}
    with tagged(monkeypatch, "a"):
        setup(box, capsys)
    box.start_sshd()
    box.wait_until_served(f"tail -n 1 {log}")
    old = BridgeClient(box.ssh_argv("bridge"))
    try:
        assert old.hello["gate"] == f"{GATE_VERSION}+a"
        with tagged(monkeypatch, "b"):
            out = setup(box, capsys)
        assert f"switch {inst.link} -> gate-versions/{builds['b']}" in out
        assert os.readlink(inst.previous) == f"gate-versions/{builds['a']}"

        # The old session's first follow and first `sources` import follow.py, watch.py
        # and install.py now, after the switch: from its own build (a mix fails them).
        old.request(1, f"tail -F -n 1 {log}")
        assert old.data_until(1, 1) == log.read_bytes().splitlines(keepends=True)[-1]
        line = b"2024-12-17 16:00:01 INFO  [test] appended after the upgrade\n"
        with open(log, "ab") as f:
            f.write(line)
        assert old.data_until(1, len(line)) == line
        data, end = old.call(2, "sources")
        assert end["exit"] == 0
        doc = json.loads(data)
        assert (doc["gate"], doc["install"]["build"]) == (f"{GATE_VERSION}+a", builds["a"])

        new = BridgeClient(box.ssh_argv("bridge"))
        try:
            assert new.hello["gate"] == f"{GATE_VERSION}+b"
            new.request(1, f"tail -F -n 1 {log}")
            assert new.data_until(1, len(line)) == line
            data, _ = new.call(2, "sources")
            assert json.loads(data)["install"]["build"] == builds["b"]
        finally:
            assert new.close()[0] == 0

        # A third build while build a still runs: a is neither current nor previous,
        # but in use, so it is kept.
        with tagged(monkeypatch, "c"):
            out = setup(box, capsys)
        assert f"switch {inst.link} -> gate-versions/{builds['c']}" in out
        assert "delete" not in out
        assert {p.name for p in inst.versions.iterdir()} == set(builds.values())
        more = b"2024-12-17 16:00:02 INFO  [test] appended after the second upgrade\n"
        with open(log, "ab") as f:
            f.write(more)
        assert old.data_until(1, len(more)) == more
    finally:
        old.close()
    # Once its last process is gone, the next run deletes it; then nothing is left to do.
    deadline = time.monotonic() + 20
    with tagged(monkeypatch, "c"):
        while f"delete {inst.build_dir(builds['a'])}" not in (out := setup(box, capsys)):
            assert time.monotonic() < deadline, out  # the gate process has not exited
            time.sleep(0.1)
        assert {p.name for p in inst.versions.iterdir()} == {builds["b"], builds["c"]}
        assert "nothing to change" in setup(box, capsys)


def test_one_shots_while_the_link_flips_never_run_a_mix(
    box: Box, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each one-shot runs wholly one build or the other, however close to a switch it
    starts: its `sources` (imported lazily) must come from the build its HELLO-free
    start loaded, and the tags must agree."""
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    with tagged(monkeypatch, "a"):
        setup(box, capsys)
    a = inst.target()
    b_build = build_of(monkeypatch, "b")
    inst.write(b_build)
    tag_of = {a: "a", b_build.id: "b"}
    box.start_sshd()
    box.wait_until_served(f"tail -n 1 {box.logs}/app.log")

    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        for _ in range(10_000_000):  # bounded; ends with the one-shots
            if stop.is_set():
                return
            inst.switch(b_build.id if flips[0] % 2 == 0 else str(a))
            flips[0] += 1

    results: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def one_shots(n: int) -> None:
        for _ in range(n):
            r = box.ssh("sources")
            with lock:
                results.append((r.returncode, r.stdout, r.stderr))

    flipper = threading.Thread(target=flip)
    flipper.start()
    runners = [threading.Thread(target=one_shots, args=(10,)) for _ in range(3)]
    try:
        for t in runners:
            t.start()
        for t in runners:
            t.join(120)
    finally:
        stop.set()
        flipper.join(30)
    assert len(results) == 30 and flips[0] > 30
    for code, out, err in results:
        assert code == 0 and "mixed gate" not in err, err
        doc = json.loads(out)
        tag = tag_of[doc["install"]["build"]]
        assert doc["gate"] == f"{GATE_VERSION}+{tag}"
    assert GATE_ENTRY in os.listdir(inst.link)
    leftovers = [p.name for p in lay.gate_dir.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_running_one_shot_pins_its_build_against_deletion(
    box: Box, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `in use` means: the entry holds its build's directory open until it exits."""
    lay = Layout(box.root, USER)
    inst = GateInstall(lay.gate_dir)
    with tagged(monkeypatch, "a"):
        setup(box, capsys)
    a = inst.build_dir(str(inst.target()))
    # A gate that waits on its stdin: `bridge`, run directly as the forced command does.
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-IS", str(lay.gate_entry), "--policy", str(lay.policy)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"SSH_ORIGINAL_COMMAND": "bridge", "PATH": "/usr/bin:/bin"},
        user=USER,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.read(9)  # the HELLO's header: the gate is up
        assert a not in inst.stale([])
        assert inst.discard(a) == f"kept {a}: a running gate uses it" and a.is_dir()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(20)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert a in inst.stale([])


def test_an_entry_whose_link_moved_on_imports_its_own_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instant between Python opening the entry through the link and the entry's
    realpath: the link may already name the next build. The entry's BUILD wins. Here
    build a's entry sits in build b's directory, which is what that instant looks like."""
    with tagged(monkeypatch, "a"):
        entry = build_gate(tmp_path / "gate")
    inst = GateInstall(tmp_path / "gate")
    b = build_of(monkeypatch, "b")
    inst.write(b)
    inst.switch(b.id)
    stray = inst.build_dir(b.id) / "from-a.py"
    shutil.copyfile(inst.build_dir(str(inst.target(inst.previous))) / GATE_ENTRY, stray)
    for path, tag in ((stray, "a"), (entry, "b")):
        out = subprocess.run(
            ["/usr/bin/python3", "-IS", str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (out.returncode, out.stdout) == (0, f"logtorukun-gate {GATE_VERSION}+{tag}\n")
