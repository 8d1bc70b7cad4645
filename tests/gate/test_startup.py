"""A one-shot gate imports only what its request needs (not timed: bench/startup.py
measures; this holds the imports, so the start-up win cannot silently regress).

`tail -n N PATH` and `help` are what plain `ssh` users send; their process must not load
`re`, `enum`, `json`, `threading` or the other modules below, each of which costs a
one-shot start more than the gate's own work. The gate runs as sshd runs it, audit
record, policy cache and sshd's ExposeAuthInfo (SSH_USER_AUTH) included.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from logtorukun.ops.gate_install import build_gate
from logtorukun.ops.sample_logs import write_sample_logs
from tests.support.sshd import SYSTEM_PYTHON

HEAVY = {
    "re",
    "enum",
    "json",
    "threading",
    "collections",
    "functools",
    "contextlib",
    "dataclasses",
    "typing",
    "hashlib",
    "base64",
    "tomllib",
    "subprocess",
    "selectors",
    "socket",
    "runpy",
    "importlib.util",
    "inspect",
}
# An ed25519 public key as sshd writes it to the SSH_USER_AUTH file.
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def imported(gate: list[str], env: dict[str, str]) -> set[str]:
    out = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-X", "importtime", *gate],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout
    return {
        line.split("|")[2].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str], Path]:
    base = tmp_path_factory.mktemp("startup")
    entry = build_gate(base / "gate", python=SYSTEM_PYTHON)
    logs = base / "logs"
    write_sample_logs(logs)
    state = base / "state"
    state.mkdir(mode=0o700)
    policy = base / "policy.toml"
    policy.write_text(
        f'[limits]\nstate_dir = "{state}"\n'
        f'[audit]\ndestination = "file"\npath = "{base}/audit.jsonl"\n'
        f'[[files]]\nroot = "{logs}"\npatterns = ["*.log"]\n'
        '[[journal]]\nunit = "app.service"\n[[docker]]\ncontainer = "web-1"\n'
    )
    auth = base / "auth"
    auth.write_text(f"publickey ssh-ed25519 {KEY}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(base),
        "SSH_CLIENT": "127.0.0.1 50000 22",
        "SSH_USER_AUTH": str(auth),
    }
    return [str(entry), "--policy", str(policy)], env, logs  # as the forced command


@pytest.mark.parametrize("command", ["tail -n 200 {logs}/app.log", "help"])
def test_a_one_shot_tail_or_help_imports_nothing_heavy(
    setup: tuple[list[str], dict[str, str], Path], command: str
) -> None:
    gate, env, logs = setup
    for _ in range(2):  # the first run writes the policy cache, the second uses it
        loaded = imported(gate, {**env, "SSH_ORIGINAL_COMMAND": command.format(logs=logs)})
    assert "logtorukun.gate.runner" in loaded and "logtorukun.gate.audit" in loaded
    assert loaded & HEAVY == set()
    assert "logtorukun.gate.bridge" not in loaded and "logtorukun.gate.cancel" not in loaded


def test_the_check_sees_a_heavy_import(setup: tuple[list[str], dict[str, str], Path]) -> None:
    """The same check on a request that does need `re` (a regex search): it is seen."""
    gate, env, logs = setup
    loaded = imported(gate, {**env, "SSH_ORIGINAL_COMMAND": f"grep -E 'a+' {logs}/app.log"})
    assert {"re", "subprocess"} <= loaded
