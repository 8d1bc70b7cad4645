"""`logtorukun-gate [--policy PATH]`: the forced command in authorized_keys.

Reads the request from SSH_ORIGINAL_COMMAND, never from argv, so nothing the client
sends can become an option of the gate itself. Imports stay minimal: this process
starts once per one-shot request.
"""

from __future__ import annotations

import os
import select
import sys

from . import GATE_VERSION
from .errors import Exit, GateError

TYPE_CHECKING = False  # collections.abc costs start-up; only the checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .vocabulary import Request

USAGE = "usage: logtorukun-gate [--policy PATH]   (the request comes from SSH_ORIGINAL_COMMAND)"


def _say(reason: str) -> None:
    os.write(2, f"logtorukun-gate: {reason}\n".encode("utf-8", "replace"))


def _stdout_writer(
    seconds: float,
) -> tuple[Callable[[bytes], None], Callable[[int, int, int], int]]:
    """Writes to stdout that give up at the request's time limit, and the same for
    sendfile (a file's bytes straight from the page cache to sshd's pipe).

    A client that stays connected but reads nothing would otherwise block a plain
    write() forever, holding the request's concurrency slot (and child) past every
    limit: stdout is made non-blocking and each wait for room is bounded.
    """
    import errno
    import fcntl
    import time

    from .output import PIPE_SIZE, LimitReached, widen_pipe

    deadline = time.monotonic() + seconds
    try:  # noqa: SIM105 (contextlib would cost start-up)
        fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_NONBLOCK)
    except OSError:
        pass
    poller = select.poll()
    poller.register(1, select.POLLOUT)

    def wait() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LimitReached(
                f"stopped after {seconds:g} s: the client is not reading (time limit in the policy)"
            )
        poller.poll(int(left * 1000) + 1)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(1, view) :]
            except BlockingIOError:
                wait()

    widened = False

    def sendfile(fd: int, offset: int, count: int) -> int:
        nonlocal widened
        if count >= PIPE_SIZE and not widened:
            widened = True
            widen_pipe(1)
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(1, fd, offset + sent, min(count - sent, 1 << 30))
            except BlockingIOError:
                wait()
                continue
            except OSError as exc:
                if sent == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return -1  # stdout cannot take sendfile: the caller copies instead
                raise
            if n == 0:
                break  # the file shrank under us
            sent += n
            if time.monotonic() >= deadline:
                wait()  # raises: the time limit holds however fast the pipe drains
        return sent

    return write, sendfile


def _stdout_gone(seconds: float, fd: int | None = None) -> bool:
    """Wait up to `seconds` (or until `fd` is readable); True once the reader of our
    stdout has closed it."""
    poller = select.poll()
    poller.register(1, 0)  # POLLERR/POLLHUP are always reported
    if fd is not None:
        poller.register(fd, select.POLLIN)
    ready = poller.poll(max(0, int(seconds * 1000 + 0.999)))
    return any(f == 1 for f, _ in ready)


def _parse_argv(argv: Sequence[str]) -> str | None:
    policy: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--policy":
            policy = next(it, None)
            if not policy:
                raise GateError(Exit.BAD_REQUEST, "--policy needs a PATH")
        elif arg.startswith("--policy="):
            policy = arg.partition("=")[2]
        elif arg == "--version":
            print(f"logtorukun-gate {GATE_VERSION}")
            raise SystemExit(0)
        elif arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        else:
            raise GateError(Exit.BAD_REQUEST, f"unknown argument {arg!r}; {USAGE}")
    return policy


def main(argv: Sequence[str] | None = None) -> int:
    from .policy import load_policy, policy_path

    try:
        path = policy_path(_parse_argv(sys.argv[1:] if argv is None else argv))
        policy = load_policy(path)
    except GateError as exc:
        _say(exc.reason)
        return int(exc.code)

    from .audit import AuditLog, identity_from_env
    from .output import Flag, Output
    from .runner import Context, serve

    ctx = Context(policy, AuditLog(policy.audit), identity_from_env(dict(os.environ)))
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if command.strip(" ") == "bridge":
        from .bridge import BridgeServer

        return BridgeServer(ctx).run()
    from . import grammar

    parsed: Request | GateError
    try:
        parsed = grammar.parse(command)
    except GateError as exc:
        parsed = exc  # serve() audits the refusal
    follow = bool(getattr(parsed, "follow", False))
    lim = policy.limits
    write, sendfile = _stdout_writer(lim.follow_max_seconds if follow else lim.max_seconds)
    out = Output(
        write,
        sendfile=sendfile,
        max_lines=policy.limits.max_lines,
        max_bytes=policy.limits.max_bytes,
        waiter=_stdout_gone,
        cancelled=Flag(),  # one thread: no `threading`
    )
    result = serve(command, ctx, out, parsed=parsed)
    if result.reason and result.reason != "client went away":
        _say(result.reason)
    ctx.audit.close()
    return result.exit


if __name__ == "__main__":
    sys.exit(main())
