"""`doctor`'s escape probes: what someone holding the web server's key would try besides
reading logs — a PTY, every kind of forwarding, the sftp subsystem, and a connection
from another address — each sent with the real OpenSSH client and each required to be
refused by sshd (not merely to fail).

The client only learns of a refusal from sshd's answer, so the probes run with
`LogLevel=INFO` and look for sshd's own words ("administratively prohibited", "PTY
allocation request failed", ...). An agent-forwarding request gets no answer from sshd
at all; it is only observable when the key has a shell (then the shell shows whether
`SSH_AUTH_SOCK` was set), and is reported as not checked otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from . import system

if TYPE_CHECKING:
    from .doctor import CheckAdder
    from .doctor_probe import HostProbe

ESCAPE_CHECKS = (
    "PTY refused",
    "stdio forwarding (-W) refused",
    "local forwarding (-L) refused",
    "remote forwarding (-R) refused",
    "dynamic forwarding (-D) refused",
    "agent forwarding refused",
    "sftp subsystem refused",
    "other source address refused",
)
PROHIBITED = "administratively prohibited"


def sshd_fix(user: str) -> str:
    """Where a weakened sshd setting for the gate user comes from, and what finds it."""
    return (
        f"on the worker, an sshd file read before /etc/ssh/sshd_config.d/logtorukun-{user}.conf"
        " overrides it (sshd keeps the first value): an earlier drop-in there, or a Match"
        " in /etc/ssh/sshd_config above its Include. Rerun `logtorukun worker setup` there:"
        " it checks sshd -T for the gate user and names that file and line"
    )


def key_fix(user: str) -> str:
    return (
        f"on the worker, keep `restrict` on the key line in /etc/logtorukun/authorized_keys/"
        f"{user} (logtorukun worker setup writes it so)"
    )


def escape_checks(w: HostProbe, add: CheckAdder, *, forced: bool) -> None:
    h = w.host
    fix = f"{sshd_fix(h.user)}; and {key_fix(h.user)}"
    target = f"127.0.0.1:{h.port}"  # the worker's own sshd, from the worker

    p = w.run("tail -n 1 /etc/hostname", "-tt", log_level="INFO")
    add(
        "PTY refused",
        "PTY allocation request failed" in p.err,
        "sshd refused a PTY (-tt)" if "PTY allocation" in p.err else "a PTY was allocated (-tt)",
        fix,
    )
    p = w.run(None, "-W", target, log_level="INFO")
    _forward(add, "stdio forwarding (-W) refused", f"-W {target}", p.err, fix)
    _forward(add, "local forwarding (-L) refused", f"-L to {target}", _listen(w, "-L", target), fix)
    p = w.run(
        "tail -n 1 /etc/hostname",
        "-R",
        "0:127.0.0.1:9",
        "-o",
        "ExitOnForwardFailure=yes",
        log_level="INFO",
    )
    refused = "remote port forwarding failed" in p.err
    add(
        "remote forwarding (-R) refused",
        refused,
        "sshd refused to listen for -R" if refused else f"-R was granted: {_last(p.err)}",
        fix,
    )
    _forward(add, "dynamic forwarding (-D) refused", "-D (SOCKS)", _listen(w, "-D", target), fix)
    _agent(w, add, forced=forced, fix=fix)
    p = w.run("sftp", "-s", log_level="INFO")
    # No Subsystem line: sshd refuses. With one, ForceCommand runs the gate instead, which
    # refuses with its bad-request exit 2 (sshd keeps no stderr for a subsystem); a real
    # sftp-server ends with 0 on our closed stdin.
    ok = "subsystem request failed" in p.err or (p.code == 2 and not p.out)
    add(
        "sftp subsystem refused",
        ok,
        f"sftp: exit {p.code}, {_last(p.err)}",
        f"{key_fix(h.user)}, and keep ForceCommand in the Match block ({sshd_fix(h.user)})",
    )
    _other_source(w, add)


def _forward(add: CheckAdder, name: str, what: str, err: str, fix: str) -> None:
    refused = PROHIBITED in err
    detail = (
        f"sshd refused {what}: {PROHIBITED}"
        if refused
        else f"{what} was not refused by sshd: {_last(err)}"
    )
    add(name, refused, detail, fix)


def _listen(w: HostProbe, flag: str, target: str) -> str:
    """Run `ssh -N -L|-D` on a free local port, connect through it once, return ssh's
    stderr: sshd's refusal is logged there before ssh closes our connection."""
    port = system.free_port()
    spec = f"127.0.0.1:{port}:{target}" if flag == "-L" else f"127.0.0.1:{port}"
    argv = w.argv(None, "-N", flag, spec, "-o", "ExitOnForwardFailure=yes", log_level="INFO")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + w.host.connect_timeout + 10
        sock = None
        while sock is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                time.sleep(0.05)  # ssh binds the port only after authenticating
        if sock is not None:
            with sock:
                sock.settimeout(w.host.connect_timeout + 10)
                if flag == "-D":  # SOCKS4 CONNECT to the worker's own sshd
                    host, _, tport = target.rpartition(":")
                    sock.sendall(
                        b"\x04\x01"
                        + int(tport).to_bytes(2, "big")
                        + socket.inet_aton(host)
                        + b"\x00"
                    )
                with contextlib.suppress(OSError):
                    sock.recv(64)  # EOF when refused; a banner or a SOCKS grant when not
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return err.decode(errors="replace")


def _agent(w: HostProbe, add: CheckAdder, *, forced: bool, fix: str) -> None:
    name = "agent forwarding refused"
    if forced:
        add(
            name,
            None,
            "not observable while the key runs only the gate: sshd does not answer an agent"
            " request, and the gate never opens the agent socket",
        )
        return
    agent = shutil.which("ssh-agent")
    if agent is None:
        add(name, None, "not checked: ssh-agent is not installed here")
        return
    started = subprocess.run([agent, "-s"], capture_output=True, text=True, timeout=10)
    env = dict(
        part.split("=", 1)
        for line in started.stdout.splitlines()
        for part in [line.split(";")[0]]
        if "=" in part
    )
    try:
        sock = env.get("SSH_AUTH_SOCK", "")
        p = w.run('echo "agent=${SSH_AUTH_SOCK:-none}"', "-A", env={"SSH_AUTH_SOCK": sock})
        granted = "agent=" in p.out and "agent=none" not in p.out
        add(
            name,
            not granted,
            "the shell saw a forwarded agent socket"
            if granted
            else "no agent socket was forwarded",
            fix,
        )
    finally:
        pid = env.get("SSH_AGENT_PID", "")
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def _other_source(w: HostProbe, add: CheckAdder) -> None:
    """Connect from a local address other than the usual one: `from=` must refuse it."""
    name = "other source address refused"
    h = w.host
    try:
        addr = ipaddress.ip_address(h.address)
    except ValueError:
        addr = None
    if addr is None or not addr.is_loopback or addr.version != 4:
        add(
            name,
            None,
            "only probed for workers on a loopback address (this server has no second"
            " address known to reach the worker); check from= on the key line instead",
        )
        return
    other = "127.0.0.2" if str(addr) != "127.0.0.2" else "127.0.0.3"
    p = w.run("tail -n 1 /etc/hostname", "-b", other)
    refused = p.code == 255 and "Permission denied" in p.err
    add(
        name,
        refused,
        f"the key was refused from {other}"
        if refused
        else f"the key was accepted from {other} (exit {p.code}): from= is missing or too wide",
        f"on the worker, give the key line in /etc/logtorukun/authorized_keys/{h.user} a"
        f' from="<web server address>" (logtorukun worker setup --from ADDR)',
    )


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
