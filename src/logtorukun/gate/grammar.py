"""The command line a client sends, parsed once into a typed request.

The gate never hands user text to a shell. It tokenizes the line itself, because it must
know what was quoted: unquoted shell syntax (`;`, `&&`, `$(..)`, backticks, redirects,
wildcards) is refused with a reason rather than silently taken as data, so a user who
meant a pipeline learns that none ran. Each verb has a strict option table; every value
is checked against ASCII classes, and user text only ever becomes an
option *value* in the argv the gate builds.

What a plain `tail -n N PATH` or `help` needs is checked with str methods
(vocabulary.is_path, is_count): a one-shot gate starts without `re`, which the rarer
options (times, priorities, positions) import when they are used.
"""

from __future__ import annotations

from .errors import Exit, GateError
from .vocabulary import (
    JOURNAL_OUTPUTS,
    MAX_COMMAND,
    MAX_PATH,
    BridgeRequest,
    Docker,
    Grep,
    Head,
    Help,
    Journal,
    Range,
    Request,
    SourcesRequest,
    Tail,
    is_count,
    is_path,
    pattern_problem,
)

_NUMBER = r"[0-9]{1,9}"  # what vocabulary.is_count accepts
# Patterns stay strings: re compiles (and caches) only the ones a request uses.
_ABS_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_JOURNAL_TIME = rf"{_ABS_TIME}|today|yesterday|now|-[0-9]{{1,6}}(?:s|min|m|h|d)"
_DOCKER_TIME = rf"{_ABS_TIME}|[0-9]{{1,6}}(?:s|m|h)|[0-9]{{1,10}}"
_PRIORITY = (
    r"(?:[0-7]|emerg|alert|crit|err|warning|notice|info|debug)"
    r"(?:\.\.(?:[0-7]|emerg|alert|crit|err|warning|notice|info|debug))?"
)


USAGE = """\
tail -n N [--before INO:OFF] PATH | head -n N PATH | cat PATH
tail -f|-F [-n N] [--from INO:OFF[:TAG]] PATH
grep [-F|-E] [-i] [-v] [-c] [-n] [-w] [-m N] [-e] PATTERN PATH [| tail -n N]
range --since TIME [--until TIME] [-m N] PATH
journalctl -u UNIT [-n N] [--since S] [--until U] [-g PATTERN] [-p PRIO] [-o FORMAT] [-f]
docker logs [--tail N] [-t] [--since S] [--until U] [-f] CONTAINER
sources | bridge | help
"""


def bad(reason: str) -> GateError:
    return GateError(Exit.BAD_REQUEST, reason)


# ---------------------------------------------------------------- tokenizer

_SHELL = ";&<>()$`"
_GLOB = "*?["
PIPE = object()


# Words of nothing but these characters mean the same to a shell and to the slow path
# below (no quotes, escapes, operators, globs, ~ or #, non-ASCII or controls): split them
# on spaces at C speed. This is what the client's commands look like.
PLAIN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ./_:=,@+%-"


def is_plain(command: str) -> bool:
    """Only PLAIN_CHARS (`strip` removes them all): the fast path of `tokenize`."""
    return not command.strip(PLAIN_CHARS)


def tokenize(command: str) -> list[str | object]:
    """Split like a POSIX shell would, but refuse everything a shell would *do*."""
    if is_plain(command):
        return [w for w in command.split(" ") if w]
    for ch in command:
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            raise bad(f"control character 0x{o:02x} in the command")
        if 0xD800 <= o <= 0xDFFF:
            # Invalid UTF-8 from sshd (U+DC80..U+DCFF escapes) or a lone surrogate from a
            # bridge request's JSON: neither can be a path or a pattern.
            raise bad("the command is not valid UTF-8")
    tokens: list[str | object] = []
    cur: list[str] = []
    started = False
    i, n = 0, len(command)
    while i < n:
        ch = command[i]
        if ch == " ":
            if started:
                tokens.append("".join(cur))
                cur, started = [], False
        elif ch == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise bad("unterminated ' quote")
            cur.append(command[i + 1 : end])
            started, i = True, end
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise bad('unterminated " quote')
                c = command[i]
                if c == '"':
                    break
                if c in "$`":
                    raise bad(f"shell expansion {c!r} is not accepted (the gate runs no shell)")
                if c == "\\" and i + 1 < n and command[i + 1] in '"\\$`':
                    i += 1
                    c = command[i]
                cur.append(c)
                i += 1
            started = True
        elif ch == "\\":
            if i + 1 >= n:
                raise bad("trailing backslash")
            i += 1
            cur.append(command[i])
            started = True
        elif ch == "|":
            if started:
                tokens.append("".join(cur))
                cur, started = [], False
            tokens.append(PIPE)
        elif ch in _SHELL:
            raise bad(f"shell syntax {ch!r} is not accepted (the gate runs no shell)")
        elif ch in _GLOB:
            raise bad(f"wildcard {ch!r} is not expanded: quote it, or name one file")
        elif ch in "~#" and not started:
            raise bad(f"{ch!r} at the start of a word is not accepted (no shell here)")
        else:
            cur.append(ch)
            started = True
        i += 1
    if started:
        tokens.append("".join(cur))
    return tokens


# ---------------------------------------------------------------- options


def _getopts(
    verb: str,
    args: list[str],
    flags: dict[str, str],
    values: dict[str, str],
) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU-style options: clusters (-iv), attached values (-n5, --lines=5), `--` ends them.

    `flags`/`values` map every accepted spelling ("-i", "--ignore-case") to a canonical
    name; anything else that starts with '-' is refused, never passed on.
    """
    opts: list[tuple[str, str]] = []
    pos: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            pos.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            pos.append(a)
            continue
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            if name in flags and not eq:
                opts.append((flags[name], ""))
            elif name in values:
                if not eq:
                    if i >= len(args):
                        raise bad(f"{verb}: option {name} needs a value")
                    val = args[i]
                    i += 1
                opts.append((values[name], val))
            else:
                raise _unknown(verb, name, flags, values)
            continue
        j = 1
        while j < len(a):
            o = "-" + a[j]
            if o in flags:
                opts.append((flags[o], ""))
                j += 1
            elif o in values:
                val = a[j + 1 :]
                if not val:
                    if i >= len(args):
                        raise bad(f"{verb}: option {o} needs a value")
                    val = args[i]
                    i += 1
                opts.append((values[o], val))
                break
            else:
                raise _unknown(verb, o, flags, values)
    return opts, pos


def _unknown(verb: str, opt: str, flags: dict[str, str], values: dict[str, str]) -> GateError:
    known = " ".join(sorted({*flags, *values}))
    return bad(f"{verb}: option {opt} is not accepted (accepted: {known})")


def number(verb: str, opt: str, text: str) -> int:
    if not is_count(text):
        raise bad(f"{verb}: {opt} takes a whole number, not {text!r}")
    return int(text)


def check_path(verb: str, text: str) -> str:
    if len(text) > MAX_PATH:
        raise bad(f"{verb}: path longer than {MAX_PATH} characters")
    if not is_path(text):
        if text.startswith("-"):
            raise bad(f"{verb}: {text!r} is not an accepted option or an absolute path")
        raise bad(f"{verb}: path must be absolute and plain ASCII without spaces: {text!r}")
    parts = text.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise bad(f"{verb}: path must not contain empty, '.' or '..' components: {text!r}")
    return text


def check_pattern(verb: str, text: str, regex: bool) -> str:
    why = pattern_problem(text, regex)
    if why is not None:
        raise bad(f"{verb}: {why}")
    return text


def _one(verb: str, pos: list[str], what: str) -> str:
    if len(pos) != 1:
        got = "nothing" if not pos else " ".join(repr(p) for p in pos)
        raise bad(f"{verb}: expected one {what}, got {got}")
    return pos[0]


# ---------------------------------------------------------------- verbs


def _tail(args: list[str]) -> Tail:
    opts, pos = _getopts(
        "tail",
        args,
        {"-f": "f", "-F": "f", "--follow": "f", "--retry": "f"},
        {"-n": "n", "--lines": "n", "--from": "from", "--before": "before"},
    )
    lines, follow, saw_n = 10, False, False
    start: tuple[int, int, int | None] | None = None
    before: tuple[int, int] | None = None
    for name, val in opts:
        if name == "n":
            lines, saw_n = number("tail", "-n", val), True
        elif name == "from":
            import re

            m = re.fullmatch(r"([0-9]{1,20}):([0-9]{1,20})(?::([0-9]{1,10}))?", val)
            if m is None:
                raise bad(f"tail: --from takes INODE:OFFSET[:TAG] (whole numbers), not {val!r}")
            tag = None if m.group(3) is None else int(m.group(3))
            start = (int(m.group(1)), int(m.group(2)), tag)
        elif name == "before":
            import re

            m = re.fullmatch(r"([0-9]{1,20}):([0-9]{1,20})", val)
            if m is None:
                raise bad(f"tail: --before takes INODE:OFFSET (whole numbers), not {val!r}")
            before = (int(m.group(1)), int(m.group(2)))
        else:
            follow = True
    if not follow and not saw_n:
        raise bad("tail: say how many lines with -n N (or follow with -f)")
    if start is not None and not follow:
        raise bad("tail: --from only goes with -f (follow from a position)")
    if before is not None and (follow or not saw_n):
        raise bad("tail: --before goes with -n N, not with -f (a page of history)")
    return Tail(check_path("tail", _one("tail", pos, "PATH")), lines, follow, start, before)


def _head(args: list[str], verb: str) -> Head:
    values = {"-n": "n", "--lines": "n"} if verb == "head" else {}
    opts, pos = _getopts(verb, args, {}, values)
    lines = number(verb, "-n", opts[-1][1]) if opts else None
    if verb == "head" and lines is None:
        raise bad("head: say how many lines with -n N")
    return Head(check_path(verb, _one(verb, pos, "PATH")), lines)


def _grep(args: list[str], tail: int | None) -> Grep:
    opts, pos = _getopts(
        "grep",
        args,
        {
            "-F": "F",
            "--fixed-strings": "F",
            "-E": "E",
            "--extended-regexp": "E",
            "-i": "i",
            "--ignore-case": "i",
            "-v": "v",
            "--invert-match": "v",
            "-c": "c",
            "--count": "c",
            "-n": "n",
            "--line-number": "n",
            "-w": "w",
            "--word-regexp": "w",
        },
        {"-m": "m", "--max-count": "m", "-e": "e", "--regexp": "e"},
    )
    seen = {name for name, _ in opts}
    patterns = [val for name, val in opts if name == "e"]
    if len(patterns) > 1:
        raise bad("grep: give one pattern (-e once)")
    if not patterns:
        if not pos:
            raise bad("grep: expected PATTERN PATH")
        patterns.append(pos.pop(0))
    if "F" in seen and "E" in seen:
        raise bad("grep: -F and -E exclude each other")
    regex = "E" in seen
    max_count = None
    for name, val in opts:
        if name == "m":
            max_count = number("grep", "-m", val)
    return Grep(
        path=check_path("grep", _one("grep", pos, "PATH after the pattern")),
        pattern=check_pattern("grep", patterns[0], regex),
        regex=regex,
        ignore_case="i" in seen,
        invert="v" in seen,
        count="c" in seen,
        max_count=max_count,
        line_numbers="n" in seen,
        word="w" in seen,
        tail=tail,
    )


def _range(args: list[str]) -> Range:
    opts, pos = _getopts(
        "range", args, {}, {"--since": "since", "--until": "until", "-m": "m", "--max-count": "m"}
    )
    got = dict(opts)
    if "since" not in got:
        raise bad("range: --since TIME is required")
    from .timerange import parse_time_arg

    parse_time_arg(got["since"])
    if "until" in got:
        parse_time_arg(got["until"])
    return Range(
        path=check_path("range", _one("range", pos, "PATH")),
        since=got["since"],
        until=got.get("until"),
        max_lines=number("range", "-m", got["m"]) if "m" in got else None,
    )


def _time(verb: str, opt: str, text: str, rx: str) -> str:
    import re

    if not re.fullmatch(rx, text):
        raise bad(f"{verb}: {opt} {text!r} is not a time this gate accepts")
    return text


def _journal(args: list[str]) -> Journal:
    opts, pos = _getopts(
        "journalctl",
        args,
        {"--no-pager": "nopager", "-f": "f", "--follow": "f", "-q": "q", "--quiet": "q"},
        {
            "-u": "u",
            "--unit": "u",
            "-n": "n",
            "--lines": "n",
            "-S": "since",
            "--since": "since",
            "-U": "until",
            "--until": "until",
            "-g": "g",
            "--grep": "g",
            "-p": "p",
            "--priority": "p",
            "-o": "o",
            "--output": "o",
        },
    )
    if pos:
        raise bad(f"journalctl: match expressions are not accepted ({pos[0]!r}); use -u UNIT")
    got = dict(opts)
    if "u" not in got or sum(1 for n, _ in opts if n == "u") != 1:
        raise bad("journalctl: exactly one -u UNIT is required")
    output = got.get("o", "short-iso")
    if output not in JOURNAL_OUTPUTS:
        raise bad(f"journalctl: -o {output!r} is not accepted ({', '.join(JOURNAL_OUTPUTS)})")
    prio = got.get("p")
    import re

    if prio is not None and not re.fullmatch(_PRIORITY, prio):
        raise bad(f"journalctl: -p {prio!r} is not a priority (0-7, err, warning..., or A..B)")
    return Journal(
        unit=got["u"],
        lines=number("journalctl", "-n", got["n"]) if "n" in got else None,
        since=_time("journalctl", "--since", got["since"], _JOURNAL_TIME)
        if "since" in got
        else None,
        until=_time("journalctl", "--until", got["until"], _JOURNAL_TIME)
        if "until" in got
        else None,
        grep=check_pattern("journalctl", got["g"], True) if "g" in got else None,
        priority=prio,
        output=output,
        follow="f" in got,
    )


def _docker(args: list[str]) -> Docker:
    if not args or args[0] != "logs":
        raise bad("docker: only `docker logs ... CONTAINER` is accepted")
    opts, pos = _getopts(
        "docker logs",
        args[1:],
        {"-t": "t", "--timestamps": "t", "-f": "f", "--follow": "f"},
        {"--tail": "tail", "-n": "tail", "--since": "since", "--until": "until"},
    )
    got = dict(opts)
    tail = got.get("tail")
    return Docker(
        container=_one("docker logs", pos, "CONTAINER"),
        tail=None if tail is None or tail == "all" else number("docker logs", "--tail", tail),
        timestamps="t" in got,
        since=_time("docker logs", "--since", got["since"], _DOCKER_TIME)
        if "since" in got
        else None,
        until=_time("docker logs", "--until", got["until"], _DOCKER_TIME)
        if "until" in got
        else None,
        follow="f" in got,
    )


def _bare(verb: str, args: list[str], req: Request) -> Request:
    if args:
        raise bad(f"{verb} takes no arguments")
    return req


def parse(command: str) -> Request:
    """One command line -> one request, or GateError(BAD_REQUEST) with a one-line reason.

    Pure and cheap; a caller that needs the request twice keeps it (the bridge hands
    what it parsed to runner.serve)."""
    # surrogatepass: a lone surrogate (bridge JSON "\ud800") must be a refusal, not a crash.
    if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND:
        raise bad(f"command longer than {MAX_COMMAND} bytes")
    if not command.strip(" "):
        raise bad("empty command; try `help`")
    tokens = tokenize(command)
    pipe_at = [i for i, t in enumerate(tokens) if t is PIPE]
    words = [t for t in tokens if isinstance(t, str)]
    if pipe_at:
        # Only `grep ... | tail -n N` of docs/gate.md ("the last N matches") is a pipeline.
        at = pipe_at[0]
        left = [t for t in tokens[:at] if isinstance(t, str)]
        right = [t for t in tokens[at + 1 :] if isinstance(t, str)]
        if len(pipe_at) > 1 or not left or left[0] != "grep" or not right or right[0] != "tail":
            raise bad("'|' is only accepted as `grep ... | tail -n N`")
        opts, pos = _getopts("tail", right[1:], {}, {"-n": "n", "--lines": "n"})
        if pos or len(opts) != 1:
            raise bad("'|' is only accepted as `grep ... | tail -n N`")
        return _grep(left[1:], number("tail", "-n", opts[0][1]))
    if not words:
        raise bad("empty command; try `help`")
    verb, args = words[0], words[1:]
    if verb == "tail":
        return _tail(args)
    if verb in ("head", "cat"):
        return _head(args, verb)
    if verb == "grep":
        return _grep(args, None)
    if verb == "range":
        return _range(args)
    if verb == "journalctl":
        return _journal(args)
    if verb == "docker":
        return _docker(args)
    if verb == "sources":
        return _bare(verb, args, SourcesRequest())
    if verb == "bridge":
        return _bare(verb, args, BridgeRequest())
    if verb == "help":
        return _bare(verb, args, Help())
    shown = verb if verb.isprintable() and len(verb) <= 40 else verb[:40].encode("unicode_escape")
    raise bad(
        f"unknown command {shown!r}; accepted: tail head cat grep range journalctl "
        "docker sources help"
    )
