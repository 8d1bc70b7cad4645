"""A real Docker daemon for the gate's `docker logs` tests, started and stopped here.

Debian's docker.io `dockerd` with its own data and exec roots, no iptables and no
bridge (loopback only, nothing touches the host's network), listening on the default
socket `/var/run/docker.sock`, because the gate reaches docker only through the exact
sudoers rule `worker setup` writes, and that rule admits no `-H`. One test run at a time
holds the daemon (a lock file), so parallel runs on one machine wait for each other
instead of fighting over the socket. Images come from no registry: a root file system
of busybox-static, imported with `docker import`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
BUSYBOX = "/bin/busybox"
SOCKET = "/var/run/docker.sock"
LOCK = "/run/logtorukun-test-docker.lock"
IMAGE = "logtorukun-test-busybox:1"
START_TIMEOUT = 60.0


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {out.stderr.strip()}")
    return out


@contextlib.contextmanager
def docker_daemon() -> Iterator[None]:
    """dockerd running on the default socket with a busybox image, for the block."""
    for exe in (DOCKERD, DOCKER, BUSYBOX):
        if not os.access(exe, os.X_OK):
            raise RuntimeError(
                f"missing {exe}: run ./dev test (it installs docker.io, busybox-static)"
            )
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = Path(tempfile.mkdtemp(prefix="logtorukun-test-docker-"))
        log = open(base / "dockerd.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [
                DOCKERD,
                f"--data-root={base / 'data'}",
                f"--exec-root={base / 'exec'}",
                f"--pidfile={base / 'dockerd.pid'}",
                f"-H=unix://{SOCKET}",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while docker("version", check=False, timeout=10).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (base / "dockerd.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"dockerd did not start: {text}")
                time.sleep(0.1)
            rootfs = base / "rootfs"
            (rootfs / "bin").mkdir(parents=True)
            shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
            for name in ("sh", "echo", "sleep", "seq"):
                (rootfs / "bin" / name).symlink_to("busybox")
            tar = subprocess.run(
                ["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True
            )
            out = subprocess.run(
                [DOCKER, "import", "-", IMAGE], input=tar.stdout, capture_output=True, check=False
            )
            if out.returncode != 0:
                raise RuntimeError(f"docker import failed: {out.stderr.decode(errors='replace')}")
            yield
        finally:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                ids = docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    docker("rm", "-f", *ids, check=False, timeout=60)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            shutil.rmtree(base, ignore_errors=True)


def run_container(name: str, script: str) -> None:
    """A detached container running `sh -c script`, with no network."""
    docker("run", "-d", "--name", name, "--network", "none", IMAGE, "/bin/sh", "-c", script)
