"""Helpers for the client tests (importable, unlike conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from logtorukun.client import PoolOptions
from logtorukun.config import HostConfig
from logtorukun.ops.system import descendants
from tests.support.sshd import Worker

FAST = PoolOptions(backoff_min=0.05, backoff_max=0.2, keepalive_interval=5)


def host_for(w: Worker, name: str = "w", **kw: Any) -> HostConfig:
    """The server-config entry for worker `w`, as `[[host]]` in server.toml would give it."""
    values: dict[str, Any] = {
        "name": name,
        "address": w.host,
        "port": w.port,
        "user": w.user,
        "key": w.client_key,
        "known_hosts": w.known_hosts,
        "connect_timeout": 5.0,
        "request_timeout": 20.0,
    }
    values.update(kw)
    return HostConfig(**values)


def write_config(path: Path, hosts: list[HostConfig]) -> Path:
    """A server.toml with these hosts (what the CLI reads)."""
    out = []
    for h in hosts:
        labels = ", ".join(f'"{x}"' for x in h.labels)
        out.append(
            f'[[host]]\nname = "{h.name}"\naddress = "{h.address}"\nport = {h.port}\n'
            f'user = "{h.user}"\nkey = "{h.key}"\nknown_hosts = "{h.known_hosts}"\n'
            f"labels = [{labels}]\nconnect_timeout = {h.connect_timeout}\n"
            f"request_timeout = {h.request_timeout}\n"
        )
    path.write_text("\n".join(out))
    return path


def gate_pids(w: Worker) -> list[int]:
    """The gate processes sshd runs for this worker right now: the Python gates first,
    then the shells that started them (killing a shell first lets sshd close the gate's
    stdin, and the gate would end its requests cleanly before its own kill arrives)."""
    out = []
    for pid in descendants(w.pid or 0):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"logtorukun-gate.py" in cmd:
            out.append((not cmd.startswith(b"/usr/bin/python3"), pid))
    return [pid for _, pid in sorted(out)]


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy (and return that)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = check()
        if value or loop.time() > end:
            assert value, f"not true within {timeout} s: {check}"
            return value
        await asyncio.sleep(0.02)


def records(w: Worker, event: str, **match: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in w.audit_records()
        if r.get("event") == event and all(r.get(k) == v for k, v in match.items())
    ]
