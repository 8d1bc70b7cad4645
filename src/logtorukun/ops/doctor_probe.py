"""What `logtorukun doctor` finds, and how it asks: one check's result, and the ssh
probe it runs against a configured host (the OpenSSH client, never a shell). Its own
module so the check families (doctor.py, doctor_escape.py, doctor_certs.py) share it
without importing each other.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..client.settings import HostConfig
from . import system

PASS, FAIL, SKIP = "pass", "fail", "skip"
SSH_FAILED = 255


@dataclass
class Check:
    scope: str  # "host NAME" or "server"
    name: str
    status: str  # pass | fail | skip
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------- ssh probes


@dataclass
class Probe:
    code: int
    out: str
    err: str


class HostProbe:
    """Runs probes against one configured host with the OpenSSH client, never a shell."""

    def __init__(self, host: HostConfig, key: Path) -> None:
        self.host = host
        self.key = key

    def argv(self, command: str | None, *options: str, log_level: str = "ERROR") -> list[str]:
        """The ssh argv; `command` None for none (-W, -N). ssh keeps the first value of
        an option, so `log_level` (INFO shows channel refusals) is a parameter."""
        h = self.host
        timeout = max(1, round(h.connect_timeout))
        return [
            system.SSH,
            "-F",
            "/dev/null",
            "-T",
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"UserKnownHostsFile={h.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            f"LogLevel={log_level}",
            *options,
            "-p",
            str(h.port),
            "--",
            f"{h.user}@{h.address}",
            *([command] if command is not None else []),
        ]

    def run(
        self,
        command: str | None,
        *options: str,
        log_level: str = "ERROR",
        env: dict[str, str] | None = None,
    ) -> Probe:
        try:
            out = subprocess.run(
                self.argv(command, *options, log_level=log_level),
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.host.connect_timeout + 30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Probe(SSH_FAILED, "", "timed out")
        return Probe(
            out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
        )
