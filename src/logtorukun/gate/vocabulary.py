"""What a read request is, said once for the gate, the client and the web server.

The verbs and their parameters (one typed record per verb), the rules a path or a name
must follow, the sizes, the exit codes with their meaning, and `command_words`: the one
way to write a request as the command line the gate parses. The gate's parser
(grammar.py) turns that line back into the same record; a property test holds the two
together. The gate imports this module, so it is standard library only and imports
nothing at start-up that the gate would not import anyway.
"""

from __future__ import annotations

import builtins  # `bytes` is also a field of Status

from .record import record


class Exit:
    """Exit codes of `logtorukun-gate`, also the `exit` of a bridge END (docs/gate.md).

    Plain ints, not an IntEnum: `enum` costs ~2 ms of every gate start.
    """

    OK = 0
    BAD_REQUEST = 2  # not in the grammar: unknown command, bad option, bad number
    REFUSED = 3  # in the grammar, but the policy does not allow it
    NOT_FOUND = 4  # allowed name, but no such file / unit / container
    LIMIT = 5  # a line, byte, CPU or wall-clock limit ended the output early
    BUSY = 6  # max_concurrent requests already running on this worker
    CONFIG = 7  # the policy file is missing or invalid: everything is refused
    AUDIT = 8  # the audit record could not be written: refused (fail closed)
    FAILED = 9  # the reader itself failed (journalctl/docker error, I/O error)


EXIT_MEANING = {
    Exit.OK: "ok",
    Exit.BAD_REQUEST: "bad request",
    Exit.REFUSED: "refused by the policy",
    Exit.NOT_FOUND: "not found",
    Exit.LIMIT: "output cut at a limit",
    Exit.BUSY: "busy",
    Exit.CONFIG: "policy missing or invalid",
    Exit.AUDIT: "audit record not written",
    Exit.FAILED: "reader failed",
}

# ---------------------------------------------------------------- sizes and rules

MAX_COMMAND = 4096  # bytes of one command line
MAX_PATH = 1024  # characters of a path
MAX_PATTERN = 1024  # characters of a search pattern
MAX_NUMBER = 999_999_999  # the largest count (`-n`, `-m`, `--tail`): nine digits
DEFAULT_LINES = 200  # lines of a tail when the caller names no number
# Absolute, printable ASCII without spaces or backslashes: look-alike letters are refused.
# Strings, not compiled: `re` compiles (and caches) only the ones a request uses.
PATH_RULE = r"/[!-\[\]-~]*"
# Unit and container names as the gate accepts them: no spaces, no '=', no '+',
# never starting with '-', so they can only ever be a name, not a match or an option.
UNIT_NAME = r"[A-Za-z0-9_][A-Za-z0-9@_.:-]{0,254}"
CONTAINER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
JOURNAL_OUTPUTS = ("short", "short-iso", "short-precise", "json", "cat")

# The same rules again as str methods, which is what the gate checks with: `re` (and the
# `enum` it imports) would cost a one-shot gate more start-up than everything else it
# imports. tests/gate/test_rules.py holds each function to its pattern above.
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def is_path(text: str) -> bool:
    """`PATH_RULE`: "/" then printable ASCII other than space and backslash."""
    return (
        text.startswith("/")
        and text.isascii()
        and text.isprintable()
        and " " not in text
        and "\\" not in text
    )


def is_count(text: str) -> bool:
    """One to nine ASCII digits: a count the grammar accepts (`[0-9]{1,9}`)."""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def _fits(text: str, first: str, rest: str, longest: int) -> bool:
    # `not s.strip(chars)`: every character of s is one of `chars` (at C speed).
    return 0 < len(text) <= longest and not text[0].strip(first) and not text.strip(rest)


def is_unit_name(text: str) -> bool:
    """`UNIT_NAME`."""
    return _fits(text, _ALNUM + "_", _ALNUM + "@_.:-", 255)


def is_container_name(text: str) -> bool:
    """`CONTAINER_NAME`."""
    return _fits(text, _ALNUM, _ALNUM + "_.-", 128)


# \1..\9 (ERE and PCRE), and PCRE2's other spellings for journalctl -g: \g1 \g{-1}
# \k<n> (?P=n), and its recursion (?R) (?1) (?-1) (?&n) (?P>n).
_BACKREF = r"\\[1-9]|\\[gk]|\(\?(?:P[=>]|&|R\)|[+-]?[0-9])"
_REPEAT = r"\{([0-9]*)(?:,([0-9]*))?\}"
MAX_REPEAT = 255
# grep -E compiles `(x{a}){b}` by copying x a*b times: nested counts multiply, and
# `((a{255}){255}){255}` alone grew grep past 10 GB. The product of the counts around
# any atom must stay at MAX_REPEAT, and the pattern's whole expansion under this budget.
MAX_EXPANSION = 8192

# ---------------------------------------------------------------- patterns


def pattern_problem(text: str, regex: bool) -> str | None:
    """What is wrong with a search pattern (None: nothing). The gate refuses such a
    pattern; the web server says so before it asks a worker."""
    if not text:
        return "empty pattern (it would match every line; use tail)"
    if len(text) > MAX_PATTERN:
        return f"pattern longer than {MAX_PATTERN} characters"
    if not text.isascii():
        import unicodedata

        for ch in text:
            if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp"):
                return f"invisible or control character U+{ord(ch):04X} in pattern"
    if not regex:
        return None
    import re  # only an extended-regex pattern pays for it

    if re.search(_BACKREF, text):
        return "back-references are refused (they make matching exponential)"
    for m in re.finditer(_REPEAT, text):
        for g in m.groups():
            if g and int(g) > MAX_REPEAT:
                return f"repetition count {g} is over {MAX_REPEAT}"
    nested, total = repetition_cost(text)
    if nested > MAX_REPEAT:
        return (
            f"nested repetition counts multiply to {nested} (at most {MAX_REPEAT});"
            " the regex engine would copy the inner part that many times"
        )
    if total > MAX_EXPANSION:
        return (
            f"counted repetitions expand the pattern to {total} atoms"
            f" (at most {MAX_EXPANSION}); use fewer or smaller {{n,m}} counts"
        )
    return None


def repetition_cost(text: str) -> tuple[int, int]:
    """`(nested, total)` for a regex: the largest product of `{n,m}` counts around one
    atom, and the number of atoms once every counted repetition is copied out (what
    grep's compiler does). `*`, `+` and `?` copy nothing. A scan, not a full parser:
    it only has to be right about groups, brackets, escapes and counts."""
    import re

    # Each open group: [total atoms so far, its largest nesting product, size of the
    # last atom, nesting product of the last atom]
    stack: list[list[int]] = [[0, 1, 0, 1]]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        top = stack[-1]
        if c == "\\":
            i += 2
            size, prod = 1, 1
        elif c == "[":
            j = i + 1
            if j < n and text[j] == "^":
                j += 1
            if j < n and text[j] == "]":
                j += 1
            while j < n and text[j] != "]":
                j = text.find("]", j + 2) + 1 if text.startswith(("[:", "[.", "[="), j) else j + 1
                if j <= 0:
                    j = n
            i = j + 1
            size, prod = 1, 1
        elif c == "(":
            stack.append([0, 1, 0, 1])
            i += 1
            continue
        elif c == ")" and len(stack) > 1:
            done = stack.pop()
            top = stack[-1]
            i += 1
            size, prod = done[0], done[1]
        elif c == "{" and (m := re.compile(_REPEAT).match(text, i)) and m.group(0) != "{}":
            lo, hi = m.group(1), m.group(2)
            count = int(hi) if hi else int(lo or 1)
            count = max(count, 1)
            i = m.end()
            # the previous atom is copied `count` times
            top[0] += top[2] * (count - 1)
            top[3] *= count
            top[2] *= count
            top[1] = max(top[1], top[3])
            continue
        elif c in "|":
            i += 1
            continue
        else:
            i += 1
            size, prod = (0, 1) if c in "*+?^$" else (1, 1)
        top[0] += size
        top[2], top[3] = size, prod
        top[1] = max(top[1], prod)
    while len(stack) > 1:  # unbalanced: grep refuses it, but count what is there
        done = stack.pop()
        stack[-1][0] += done[0]
        stack[-1][1] = max(stack[-1][1], done[1])
    return stack[0][1], stack[0][0]


# ---------------------------------------------------------------- the requests


@record(frozen=True)
class Tail:
    path: str
    lines: int
    follow: bool = False
    # `--from INO:OFF[:TAG]`: follow from that inode and offset; TAG (readers.tag_at)
    # proves the file there is still the one that position was taken in.
    start: tuple[int, int, int | None] | None = None
    # `--before INO:OFF`: the N lines that end at OFF of that file (paging back in history)
    before: tuple[int, int] | None = None


@record(frozen=True)
class Head:
    """`head -n N PATH` and `cat PATH` (N = None: up to the policy's caps)."""

    path: str
    lines: int | None


@record(frozen=True)
class Grep:
    path: str
    pattern: str
    regex: bool = False
    ignore_case: bool = False
    invert: bool = False
    count: bool = False
    max_count: int | None = None
    line_numbers: bool = False
    word: bool = False
    tail: int | None = None  # `| tail -n N`: keep only the last N output lines


@record(frozen=True)
class Range:
    path: str
    since: str
    until: str | None = None
    max_lines: int | None = None


@record(frozen=True)
class Journal:
    unit: str
    lines: int | None = None
    since: str | None = None
    until: str | None = None
    grep: str | None = None
    priority: str | None = None
    output: str = "short-iso"
    follow: bool = False


@record(frozen=True)
class Docker:
    container: str
    tail: int | None = None
    timestamps: bool = False
    since: str | None = None
    until: str | None = None
    follow: bool = False


@record(frozen=True)
class SourcesRequest:
    pass


@record(frozen=True)
class BridgeRequest:
    pass


@record(frozen=True)
class Help:
    pass


Request = Tail | Head | Grep | Range | Journal | Docker | SourcesRequest | BridgeRequest | Help


# ---------------------------------------------------------------- how a request ended


@record(frozen=True)
class Status:
    """How a request ended: the gate's exit code and reason, what it sent, whether a
    limit cut it, and for a file's tail where a follow would continue (inode, offset,
    tag). What the gate's `runner.serve` returns, the body of a bridge END frame, the
    client's `Stream.status`, and what the web server answers and audits."""

    exit: int
    reason: str = ""
    lines: int = 0
    bytes: int = 0
    truncated: bool = False
    pos: tuple[int, int, int] | None = None

    @property
    def ok(self) -> bool:
        """Data is complete or was cut at a limit (`truncated`): either way, show it."""
        return self.exit in (Exit.OK, Exit.LIMIT)

    def to_json(self) -> builtins.bytes:
        import json

        body: dict[str, object] = {
            "exit": self.exit,
            "reason": self.reason,
            "lines": self.lines,
            "bytes": self.bytes,
            "truncated": self.truncated,
        }
        if self.pos is not None:
            body["pos"] = list(self.pos)
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, payload: builtins.bytes) -> Status:
        """The END frame's body; ValueError/KeyError/TypeError if it is not one."""
        import json

        body = json.loads(payload)
        pos = body.get("pos")
        return cls(
            exit=int(body["exit"]),
            reason=str(body.get("reason") or ""),
            lines=int(body.get("lines", 0)),
            bytes=int(body.get("bytes", 0)),
            truncated=bool(body.get("truncated", False)),
            pos=(int(pos[0]), int(pos[1]), int(pos[2]))
            if isinstance(pos, list) and len(pos) == 3
            else None,
        )


# ---------------------------------------------------------------- request -> command line


def command_words(req: Request) -> tuple[list[str], int | None]:
    """The words of `req`'s command line, and N of a trailing `| tail -n N` (or None).

    Values stay whole words (an option's value after `=` or as the next word, `-e` before
    a pattern, `--` before a container), so quoting each word is all a sender must do.
    """
    if isinstance(req, Tail):
        words = ["tail", "-F"] if req.follow else ["tail"]
        words += ["-n", str(req.lines)]
        if req.start is not None:
            ino, off, tag = req.start
            words += ["--from", f"{ino}:{off}" if tag is None else f"{ino}:{off}:{tag}"]
        if req.before is not None:
            words += ["--before", f"{req.before[0]}:{req.before[1]}"]
        return [*words, req.path], None
    if isinstance(req, Head):
        if req.lines is None:
            return ["cat", req.path], None
        return ["head", "-n", str(req.lines), req.path], None
    if isinstance(req, Grep):
        return ["grep", *grep_options(req), req.path], req.tail
    if isinstance(req, Range):
        words = ["range", f"--since={req.since}"]
        if req.until is not None:
            words.append(f"--until={req.until}")
        if req.max_lines is not None:
            words += ["-m", str(req.max_lines)]
        return [*words, req.path], None
    if isinstance(req, Journal):
        words = ["journalctl", "-u", req.unit]
        if req.lines is not None:
            words += ["-n", str(req.lines)]
        for opt, value in (("since", req.since), ("until", req.until), ("grep", req.grep)):
            if value is not None:
                words.append(f"--{opt}={value}")
        if req.priority is not None:
            words += ["-p", req.priority]
        words += ["-o", req.output]
        if req.follow:
            words.append("-f")
        return words, None
    if isinstance(req, Docker):
        words = ["docker", "logs"]
        if req.tail is not None:
            words += ["--tail", str(req.tail)]
        if req.timestamps:
            words.append("--timestamps")
        for opt, value in (("since", req.since), ("until", req.until)):
            if value is not None:
                words.append(f"--{opt}={value}")
        if req.follow:
            words.append("--follow")
        return [*words, "--", req.container], None
    if isinstance(req, SourcesRequest):
        return ["sources"], None
    if isinstance(req, BridgeRequest):
        return ["bridge"], None
    return ["help"], None


def grep_options(req: Grep) -> list[str]:
    """grep's options for `req`, ending `-e PATTERN` (a pattern, even one starting with
    '-'): the same in the command line a client sends and in the argv the gate runs."""
    words = ["-E" if req.regex else "-F"]
    for on, flag in (
        (req.ignore_case, "-i"),
        (req.invert, "-v"),
        (req.count, "-c"),
        (req.line_numbers, "-n"),
        (req.word, "-w"),
    ):
        if on:
            words.append(flag)
    if req.max_count is not None:
        words += ["-m", str(req.max_count)]
    return [*words, "-e", req.pattern]


def join_words(words: list[str], pipe_tail: int | None = None) -> str:
    """One command line from `command_words`: each word shell-quoted, so the gate's
    tokenizer gives exactly these words back."""
    import shlex  # the gate parses lines, it never builds them: not at its start-up

    line = " ".join(shlex.quote(w) for w in words)
    return line if pipe_tail is None else f"{line} | tail -n {pipe_tail}"


def command_line(req: Request) -> str:
    """The command line the gate parses back into `req`."""
    return join_words(*command_words(req))
