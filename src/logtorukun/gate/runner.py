"""One request, start to end: parse, check the policy, audit, run under limits, audit again.

`serve` is the only way a command is executed, for a one-shot `ssh host CMD` and for each
request inside a bridge session alike, so both get the same checks and records.
"""

from __future__ import annotations

import fcntl
import os
import select
import time

from . import GATE_VERSION, grammar
from .audit import AuditLog, now_iso
from .errors import Cancelled, Exit, GateError
from .output import LimitReached, Output
from .paths import open_under
from .policy import Policy
from .record import field, record
from .vocabulary import (
    BridgeRequest,
    Docker,
    Grep,
    Head,
    Help,
    Journal,
    Range,
    Request,
    SourcesRequest,
    Status,
    Tail,
    grep_options,
)

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CHUNK = 65536
PIPE_CHUNK = 1 << 20
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


@record
class Context:
    """What a request runs with: the policy, the audit log and who is asking."""

    policy: Policy
    audit: AuditLog
    identity: dict[str, Any] = field(default_factory=dict)
    mode: str = "oneshot"


@record
class Plan:
    """An authorised request, ready to run: its opened file (if any) and how to run it."""

    request: Request
    run: Callable[[Output], None]
    needs_slot: bool = True
    fds: list[int] = field(default_factory=list)
    target: str = ""
    # Address space for the children it starts: asked for (max_memory) by authorize,
    # then what the worker's memory budget granted (slots.acquire), 0 if none.
    memory: int = 0

    def close(self) -> None:
        for fd in self.fds:
            try:  # noqa: SIM105 (contextlib would cost start-up)
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def is_quick(request: Request) -> bool:
    """Served inline by a bridge: bounded, in-process, no waiting, a few reads at most.
    Exactly the requests that take no concurrency slot."""
    return isinstance(request, SourcesRequest | Help) or (
        isinstance(request, Tail) and not request.follow and not request.path.endswith(".gz")
    )


def serve(
    command: str,
    ctx: Context,
    out: Output,
    *,
    via: dict[str, Any] | None = None,
    plan_hook: Callable[[Plan], None] | None = None,
    parsed: Request | GateError | None = None,
) -> Status:
    """Run `command`; every outcome, including refusals, is audited. Never raises GateError.

    `parsed`: what `grammar.parse(command)` gave a caller that parsed it already (the
    bridge, to choose a thread or not): the request, or the refusal to audit.
    """
    t0 = time.monotonic()
    base = _base(command, ctx, via)
    try:
        request = grammar.parse(command) if parsed is None else parsed
        if isinstance(request, GateError):
            raise request
        plan = authorize(request, ctx.policy)
    except GateError as exc:
        return _refuse(ctx, base, exc)
    slot = None
    try:
        if plan.needs_slot:
            from . import slots  # a quick request (tail, help) takes no slot: no import

            slot = slots.acquire(ctx.policy.limits, plan.memory)
            plan.memory = slot.memory
        ctx.audit.write({**base, "event": "request", "decision": "allow", "target": plan.target})
    except GateError as exc:
        plan.close()
        if slot is not None:
            slot.release()
        return _refuse(ctx, base, exc)
    if plan_hook is not None:
        plan_hook(plan)
    code, reason = Exit.OK, ""
    lim = ctx.policy.limits
    if getattr(plan.request, "follow", False):
        out.start_clock(lim.follow_max_seconds, _follow_reason(lim.follow_max_seconds))
    else:
        out.start_clock(lim.max_seconds)
    try:
        plan.run(out)
    except LimitReached as exc:
        code, reason = Exit.LIMIT, exc.reason
    except Cancelled:
        reason = "client went away"
    except GateError as exc:
        code, reason = exc.code, exc.reason
    except OSError as exc:
        code, reason = Exit.FAILED, f"read failed: {exc.strerror or exc}"
    finally:
        plan.close()
        if slot is not None:
            slot.release()
    truncated = out.truncated or code == Exit.LIMIT
    end = {
        "ts": now_iso(),
        "id": base["id"],
        "event": "end",
        "exit": code,
        "reason": reason,
        "lines": out.lines,
        "bytes": out.bytes,
        "truncated": truncated,
        "duration_ms": round((time.monotonic() - t0) * 1000, 3),
        **out.notes,
    }
    try:
        ctx.audit.write(end)
    except GateError as exc:
        # The data is out already; the start record exists. Say so rather than hide it.
        reason = f"{reason}; {exc.reason}" if reason else exc.reason
        if code == Exit.OK:
            code = Exit.AUDIT
    return Status(code, reason, out.lines, out.bytes, truncated, out.position)


def _base(command: str, ctx: Context, via: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": now_iso(),
        "id": os.urandom(8).hex(),
        "mode": ctx.mode,
        **ctx.identity,
        "command": command,
    }
    if via:
        base["via"] = via
    return base


def deny(command: str, ctx: Context, code: int, reason: str, *, via: Any = None) -> Status:
    """Audit a request refused before it could be served (a malformed bridge frame, a
    session over its limits): the same `deny` record a refused command gets."""
    return _refuse(ctx, _base(command, ctx, via), GateError(code, reason))


def _refuse(ctx: Context, base: dict[str, Any], exc: GateError) -> Status:
    record = {
        **base,
        "event": "request",
        "decision": "deny",
        "exit": int(exc.code),
        "reason": exc.reason,
    }
    try:
        ctx.audit.write(record)
    except GateError as audit_exc:
        return Status(audit_exc.code, audit_exc.reason)
    return Status(exc.code, exc.reason)


# ---------------------------------------------------------------- authorisation


def authorize(req: Request, policy: Policy) -> Plan:
    """Check `req` against the policy and open what it reads; refusals raise GateError."""
    lim = policy.limits
    if isinstance(req, BridgeRequest):
        raise GateError(Exit.BAD_REQUEST, "bridge cannot be nested inside a request")
    if isinstance(req, Help):
        text = grammar.USAGE.encode()
        return Plan(req, lambda out: out.write(text), needs_slot=False)
    if isinstance(req, SourcesRequest):
        return Plan(req, lambda out: out.write(sources_json(policy)), needs_slot=False)
    if isinstance(req, Journal):
        if not _allowed_unit(req.unit, policy):
            raise GateError(Exit.REFUSED, f"unit {req.unit!r} is not allowed by the policy")
        argv = journal_argv(req, policy)
        secs = lim.follow_max_seconds if req.follow else lim.max_seconds
        env = {**_CHILD_ENV, "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        plan = Plan(req, lambda out: None, target=f"unit:{req.unit}", memory=lim.max_memory)
        plan.run = lambda out: run_child(
            argv, None, out, seconds=secs, limits=policy, memory=plan.memory, env=env
        )
        return plan
    if isinstance(req, Docker):
        if req.container not in policy.containers:
            raise GateError(Exit.REFUSED, f"container {req.container!r} is not allowed")
        argv = docker_argv(req, policy)
        secs = lim.follow_max_seconds if req.follow else lim.max_seconds
        plan = Plan(req, lambda out: None, target=f"container:{req.container}")
        plan.memory = lim.max_memory
        plan.run = lambda out: run_child(
            argv,
            None,
            out,
            seconds=secs,
            limits=policy,
            memory=plan.memory,
            merge_stderr=True,
            go_runtime=True,
        )
        return plan

    rule, parts = policy.file_rule(req.path)
    fd = open_under(rule, parts, req.path)
    gz = req.path.endswith(".gz")
    plan = Plan(req, lambda out: None, fds=[fd], target=req.path)
    from . import readers

    if isinstance(req, Tail):
        n = min(req.lines, lim.max_lines)
        if req.follow:
            if gz:
                plan.close()
                raise GateError(Exit.BAD_REQUEST, "tail -f of a compressed file never grows")

            def reopen() -> int | None:
                try:
                    return open_under(rule, parts, req.path)
                except GateError:
                    return None

            def sibling(name: str) -> int | None:
                """Another name in the followed file's directory (a rotated copy), if
                the policy lets this key read it: found by inotify's rename events."""
                other = f"{os.path.dirname(req.path)}/{name}"
                try:
                    grammar.check_path("tail", other)  # the same path syntax as any request
                    rule2, parts2 = policy.file_rule(other)
                    return open_under(rule2, parts2, other)
                except GateError:
                    return None

            def find(ino: int) -> int | None:
                return find_rotated(policy, req.path, ino)

            deadline = time.monotonic() + lim.follow_max_seconds
            reason = _follow_reason(lim.follow_max_seconds)

            def run_follow(out: Output) -> None:
                # follow owns (and closes) the fd once it runs; until then the plan does,
                # so a follow refused as busy or for the audit does not leak it.
                plan.fds.clear()
                from .follow import follow

                follow(
                    fd,
                    reopen,
                    n,
                    out,
                    deadline=deadline,
                    deadline_reason=reason,
                    path=req.path,
                    sibling=sibling,
                    start=req.start,
                    find=find,
                )

            plan.run = run_follow
        else:
            if req.before is not None:
                ino = req.before[0]
                if os.fstat(fd).st_ino != ino:  # rotated since: find it under its new name
                    old = None if gz else find_rotated(policy, req.path, ino)
                    if old is None:
                        plan.close()
                        raise GateError(
                            Exit.NOT_FOUND,
                            f"{req.path}: the file being paged (inode {ino}) was rotated away;"
                            " start again from the newest lines",
                        )
                    plan.close()
                    fd = old
                    plan.fds = [fd]

            def run_tail(out: Output) -> None:
                if req.before is not None:
                    readers.tail_before(fd, req.before[1], n, out, gz=gz)
                    return
                readers.tail(fd, n, out, gz=gz)
                if n < req.lines and out.lines >= n:  # the file really had more lines
                    raise LimitReached(f"asked for {req.lines} lines; max_lines is {n}")

            plan.run = run_tail
            plan.needs_slot = gz  # a .gz is decompressed from its start: that can take long
    elif isinstance(req, Head):
        head_n = req.lines
        plan.run = lambda out: readers.copy_lines(fd, out, head_n, gz=gz)
    elif isinstance(req, Range):
        from .timerange import parse_time_arg, read_range

        since = parse_time_arg(req.since)
        until = parse_time_arg(req.until) if req.until else None
        plan.run = lambda out: read_range(fd, since, until, out, max_lines=req.max_lines, gz=gz)
    else:
        argv = grep_argv(req, policy)
        plan.memory = lim.max_memory

        def run_grep(out: Output) -> None:
            try:
                run_child(
                    argv,
                    fd,
                    out,
                    seconds=lim.max_seconds,
                    limits=policy,
                    memory=plan.memory,
                    keep_last=req.tail,
                    gunzip=gz,
                )
            except GateError as exc:
                raise _bad_pattern(req, argv[0], exc) from None

        plan.run = run_grep
    return plan


def _bad_pattern(req: Grep, program: str, exc: GateError) -> GateError:
    """grep reads our pipe and gets options we built, so when it fails (exit 2) on an
    extended regex, the pattern is what is wrong: a bad request naming it, not a failure
    of the worker."""
    failed = f"{os.path.basename(program)} failed: "
    if not (req.regex and exc.code == Exit.FAILED and exc.reason.startswith(failed)):
        return exc
    why = exc.reason[len(failed) :].removeprefix("grep: ")
    return GateError(Exit.BAD_REQUEST, f"grep: the pattern {req.pattern!r} is not valid: {why}")


def _follow_reason(seconds: float) -> str:
    return f"follow stopped after {seconds:g} s (follow_max_seconds)"


MAX_ROTATED = 64  # names looked at when a follow continues in a rotated-away file


def find_rotated(policy: Policy, path: str, ino: int) -> int | None:
    """An fd of the file with inode `ino` among the uncompressed files next to `path`
    that the policy admits (`app.log.1` after a rename rotation), or None."""
    directory = os.path.dirname(path)
    try:
        names = sorted(os.listdir(directory))[: MAX_ROTATED * 4]
    except OSError:
        return None
    looked = 0
    for name in names:
        candidate = f"{directory}/{name}"
        if candidate == path or name.endswith(".gz") or looked >= MAX_ROTATED:
            continue
        try:
            rule, parts = policy.file_rule(candidate)
        except GateError:
            continue
        looked += 1
        try:
            fd = open_under(rule, parts, candidate)
        except GateError:
            continue
        try:
            if os.fstat(fd).st_ino == ino:
                return fd
        except OSError:
            pass
        os.close(fd)
    return None


def _allowed_unit(unit: str, policy: Policy) -> bool:
    return any(unit in (u, f"{u}.service") or f"{unit}.service" == u for u in policy.units)


# ---------------------------------------------------------------- argv builders


def grep_argv(req: Grep, policy: Policy) -> list[str]:
    # The options as the request spelled them (vocabulary.grep_options, ending `-e
    # PATTERN`); no file operand: grep reads the file from stdin.
    return [policy.programs.grep, "-a", "--color=never", *grep_options(req)]


def journal_argv(req: Journal, policy: Policy) -> list[str]:
    prog = policy.programs
    argv = [prog.journalctl, *prog.journalctl_args, "--no-pager", "--quiet", "-o", req.output]
    argv += ["-u", req.unit]
    if req.lines is not None:
        argv += ["-n", str(min(req.lines, policy.limits.max_lines))]
    if req.since:
        argv.append(f"--since={req.since}")
    if req.until:
        argv.append(f"--until={req.until}")
    if req.grep:
        argv.append(f"--grep={req.grep}")
    if req.priority:
        argv += ["-p", req.priority]
    if req.follow:
        argv.append("--follow")
    return argv


def docker_argv(req: Docker, policy: Policy) -> list[str]:
    """Fixed order, so the sudoers rule in docs/gate.md can match it exactly."""
    argv = [*policy.programs.docker, "logs"]
    if req.tail is not None:
        argv += ["--tail", str(min(req.tail, policy.limits.max_lines))]
    if req.timestamps:
        argv.append("--timestamps")
    if req.since:
        argv += ["--since", req.since]
    if req.until:
        argv += ["--until", req.until]
    if req.follow:
        argv.append("--follow")
    return [*argv, "--", req.container]


# ---------------------------------------------------------------- execution


def run_child(
    argv: list[str],
    stdin_fd: int | None,
    out: Output,
    *,
    seconds: float,
    limits: Policy,
    memory: int,
    env: dict[str, str] | None = None,
    merge_stderr: bool = False,
    keep_last: int | None = None,
    gunzip: bool = False,
    go_runtime: bool = False,
) -> None:
    """Stream a child's stdout as whole lines; kill it at the wall or CPU limit or on cancel.

    `memory`: the address space the children may use together (the request's grant from
    the worker's memory budget); a gzip feeding grep gets `GZIP_MEMORY` of it."""
    import contextlib
    import subprocess
    import tempfile
    from collections import deque

    deadline = time.monotonic() + seconds
    cpu = max(1, int(limits.limits.max_seconds))
    mem = memory - GZIP_MEMORY if gunzip else memory
    limit_child = _child_limits(cpu, mem, go=go_runtime)
    procs: list[subprocess.Popen[bytes]] = []
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finally)
    try:
        src: int | Any = stdin_fd if stdin_fd is not None else subprocess.DEVNULL
        if gunzip:
            unzip = subprocess.Popen(
                [limits.programs.gzip, "-dc"],
                stdin=src,
                stdout=subprocess.PIPE,
                stderr=errfile,
                env=_CHILD_ENV,
                close_fds=True,
                preexec_fn=_child_limits(cpu, GZIP_MEMORY),
            )
            procs.append(unzip)
            src = unzip.stdout
        proc = subprocess.Popen(
            argv,
            stdin=src,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else errfile,
            env=env or _CHILD_ENV,
            close_fds=True,
            preexec_fn=limit_child,
        )
        procs.append(proc)
        if gunzip and procs[0].stdout is not None:
            procs[0].stdout.close()
        assert proc.stdout is not None
        pipe = proc.stdout.fileno()
        # A 1 MiB pipe and 1 MiB reads: a grep with many matches then costs a few
        # hundred Python iterations per GiB instead of thousands (64 KiB default).
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_CHUNK)
        poller = select.poll()
        poller.register(pipe, select.POLLIN | select.POLLHUP)
        rest = b""
        ring: deque[bytes] = deque()
        ring_bytes = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise LimitReached(f"stopped after {seconds:g} s (time limit in the policy)")
            if not poller.poll(min(500.0, (deadline - now) * 1000)):
                out.sleep(0)  # raises Cancelled if the client went away
                continue
            chunk = os.read(pipe, PIPE_CHUNK)
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < 1 << 20:
                rest = data
                continue
            cut = cut or len(data)
            rest = data[cut:]
            if keep_last is None:
                out.write_bulk(data[:cut])
                continue
            for line in data[:cut].splitlines(keepends=True):
                ring.append(line)
                ring_bytes += len(line)
                while len(ring) > keep_last or ring_bytes > out.max_bytes:
                    ring_bytes -= len(ring.popleft())
        if rest:
            if keep_last is None:
                out.write(rest)
            else:
                ring.append(rest)
                while len(ring) > keep_last:
                    ring.popleft()
        if ring:
            out.write(b"".join(ring))
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if code < 0 and -code in (24, 9):  # SIGXCPU / SIGKILL from RLIMIT_CPU
            raise LimitReached(f"stopped at the CPU limit ({cpu} s)")
        failed = None
        if code not in (0, 1) or (code == 1 and not argv[0].endswith("grep")):
            failed = proc
        elif gunzip:
            # gzip killed by SIGPIPE is grep -m having stopped reading; anything else is
            # corrupt data, which must not pass for "no match".
            zcode = procs[0].wait(timeout=max(0.1, deadline - time.monotonic()))
            if zcode not in (0, 2, -13):  # 2: "trailing garbage ignored", as gzip -dc
                failed = procs[0]
        if failed is not None:
            errfile.seek(0)
            text = errfile.read(4000).decode("utf-8", "replace")
            if failed.returncode in (-6, -11) or any(w in text.lower() for w in _OUT_OF_MEMORY):
                raise LimitReached(f"stopped at the memory limit ({_memory_why(memory, limits)})")
            msg = text.strip().splitlines()
            detail = msg[0] if msg else f"exit status {failed.returncode}"
            name = os.path.basename(str(failed.args[0]))  # type: ignore[index]
            raise GateError(Exit.FAILED, f"{name} failed: {detail}")
    except subprocess.TimeoutExpired:
        raise LimitReached(f"stopped after {seconds:g} s (time limit in the policy)") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        errfile.close()


GZIP_MEMORY = 16 << 20  # gzip -dc needs under 4 MiB of address space


def _memory_why(granted: int, policy: Policy) -> str:
    lim = policy.limits
    if granted >= lim.max_memory:
        return f"{granted >> 20} MiB, max_memory in the policy"
    return (
        f"{granted >> 20} MiB: other requests' children hold the rest of max_total_memory,"
        f" {lim.max_total_memory >> 20} MiB; try again shortly"
    )


# What a child prints when it hits RLIMIT_AS: grep "memory exhausted", gzip and libc
# "Cannot allocate memory", Go "cannot allocate memory" / "out of memory".
_OUT_OF_MEMORY = ("memory exhausted", "cannot allocate memory", "out of memory")


def _child_limits(cpu: int, mem: int, *, go: bool = False) -> Callable[[], None]:
    """The pre-exec step of every child: CPU and memory limits set in the child itself
    before exec, so no byte of it runs unlimited (prlimit after the spawn would leave a
    window). It calls only setrlimit: safe between fork and exec even with the bridge's
    threads. Memory is RLIMIT_AS (address space), except for a Go program (docker): the
    Go runtime reserves far more address space than it uses and cannot start under a
    512 MiB RLIMIT_AS, so it gets RLIMIT_DATA (the heap and other private writable
    memory, where growth happens) of the same size."""
    import resource

    which = resource.RLIMIT_DATA if go else resource.RLIMIT_AS

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(which, (mem, mem))

    return limit


def sources_json(policy: Policy) -> bytes:
    """What this key may read: files (size, mtime) under each root, units, containers."""
    import json

    files: list[dict[str, Any]] = []
    for rule in policy.files:
        _list_rule(rule, files)
    doc = {
        "gate": GATE_VERSION,
        "files": files,
        "units": list(policy.units),
        "containers": list(policy.containers),
        "limits": {
            "max_lines": policy.limits.max_lines,
            "max_bytes": policy.limits.max_bytes,
            "max_seconds": policy.limits.max_seconds,
            "follow_max_seconds": policy.limits.follow_max_seconds,
        },
    }
    from .install import install_report

    install = install_report()
    if install is not None:
        doc["install"] = install  # can the gate user change what runs? (doctor asks)
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


_MAX_LISTED = 2000
_LIST_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def _readable(name: str, dirfd: int) -> bool:
    """Whether this user can open the (regular) file for reading: mode bits, ACLs and
    security modules all decide, so the open itself is the test; O_NONBLOCK and
    O_NOFOLLOW so a file swapped for a FIFO or a link meanwhile cannot hang or lead out."""
    try:
        fd = os.open(name, _LIST_OPEN, dir_fd=dirfd)
    except OSError:
        return False
    os.close(fd)
    return True


def _list_rule(rule: Any, files: list[dict[str, Any]]) -> None:
    """Walk with directory fds and no symlink following (os.fwalk), so a directory
    swapped for a link mid-walk cannot list names from outside the root."""
    import stat as st

    root = rule.root.rstrip("/") or "/"
    real = os.path.realpath(root)  # the root is the administrator's and may be a link
    try:
        walk = os.fwalk(real, follow_symlinks=False)
        for dirpath, dirnames, filenames, dirfd in walk:
            rel_dir = dirpath[len(real) :].lstrip("/")
            if rel_dir.count("/") >= 8:
                dirnames.clear()
            dirnames.sort()
            for fname in sorted(filenames):
                name = f"{rel_dir}/{fname}" if rel_dir else fname
                if not rule.matches(name):
                    continue
                try:
                    info = os.stat(fname, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if not st.S_ISREG(info.st_mode) or (info.st_nlink > 1 and not rule.allow_hardlinks):
                    continue
                if not _readable(fname, dirfd):
                    continue
                files.append(
                    {
                        "path": f"{root}/{name}" if root != "/" else f"/{name}",
                        "size": info.st_size,
                        "mtime": int(info.st_mtime),
                        "compressed": name.endswith(".gz"),
                    }
                )
                if len(files) >= _MAX_LISTED:
                    return
    except OSError:
        return
