"""Glob matching in time linear in the text: one meaning for a pattern in worker policies
and in the web server's roles and searches (standard library only: the gate imports it).

Syntax: `*`, `?` and `[...]` (`[!...]` negates) stay inside one path component; `**/`
matches zero or more whole components (`a/` `a/b/`); `**` anywhere else matches any
text, `/` included. A `[` without its `]` is a literal.

Why not a regular expression: Python's `re` backtracks, and a glob such as
`*a*a*a*a*a*b` against a long name of `a`s took it seconds to minutes (on the web
server's event loop, for everyone). Here a pattern becomes a small NFA whose set of
live states is one integer bitmask; each input character is one step over that set
(memoised per (state set, character), so a repeated step is one dict lookup). Time is
O(len(text)) steps whatever the pattern; a step costs O(pattern) bit operations at
worst. Runs of `*` are collapsed first, so no pattern has long epsilon chains.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; only the checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable

# What a user may send (the web server enforces these; worker policies are the admin's).
MAX_GLOB_CHARS = 256
MAX_GLOB_WILDCARDS = 16
_CACHE_LIMIT = 4096  # memoised steps per pattern; cleared (not grown) beyond


class GlobError(ValueError):
    """The pattern cannot be used; the message says why."""


def _any(c: str) -> bool:
    return True


def _not_slash(c: str) -> bool:
    return c != "/"


def _slash(c: str) -> bool:
    return c == "/"


def _literal(ch: str) -> Callable[[str], bool]:
    return lambda c: c == ch


def _klass(body: str, negate: bool) -> Callable[[str], bool]:
    """A bracket expression's body: single characters and `a-z` ranges, never `/`."""
    singles: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo > hi:
                raise GlobError(f"bad range {lo}-{hi} in [{body}]")
            ranges.append((lo, hi))
            i += 3
        else:
            singles.add(body[i])
            i += 1

    def test(c: str) -> bool:
        if c == "/":
            return False
        inside = c in singles or any(lo <= c <= hi for lo, hi in ranges)
        return inside != negate

    return test


# Token kinds: ONE consumes one character; STAR loops on its own state; DIRS is
# `(?:[^/]+/)*` and takes two states (at a component's start; inside a component).
_ONE, _STAR, _DIRS = 0, 1, 2


def _tokens(pattern: str) -> tuple[list[tuple[int, Callable[[str], bool]]], int]:
    """(tokens, wildcard count); adjacent stars are merged into one."""
    out: list[tuple[int, Callable[[str], bool]]] = []
    wild = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            if not (out and out[-1][0] == _DIRS):
                out.append((_DIRS, _not_slash))
                wild += 1
            i += 3
            continue
        if c == "*":
            pred = _any if pattern.startswith("**", i) else _not_slash
            i += 2 if pred is _any else 1
            if out and out[-1][0] == _STAR:
                if pred is _any:
                    out[-1] = (_STAR, _any)
                continue
            out.append((_STAR, pred))
            wild += 1
            continue
        if c == "?":
            out.append((_ONE, _not_slash))
            wild += 1
        elif c == "[" and (end := pattern.find("]", i + (3 if _negated(pattern, i) else 2))) >= 0:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            out.append((_ONE, _klass(body[1:] if negate else body, negate)))
            wild += 1
            i = end
        else:
            out.append((_ONE, _literal(c)))
        i += 1
    return out, wild


def _negated(pattern: str, i: int) -> bool:
    # POSIX: a `]` right after `[` or `[!` is a member, not the end.
    return pattern.startswith("[!", i)


class Glob:
    """A compiled glob; `match(text)` is a full match (the whole text)."""

    __slots__ = (
        "_eps1",
        "_eps2",
        "_final",
        "_masks",
        "_moves",
        "_start",
        "_steps",
        "pattern",
        "wildcards",
    )

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens, self.wildcards = _tokens(pattern)
        # Per state: (kind of move, predicate); kinds: 0 step to next, 1 loop, 2 step back.
        moves: list[list[tuple[int, Callable[[str], bool]]]] = []
        eps1 = eps2 = 0
        for kind, pred in tokens:
            bit = 1 << len(moves)
            if kind == _ONE:
                moves.append([(0, pred)])
            elif kind == _STAR:
                moves.append([(1, pred)])
                eps1 |= bit
            else:
                moves.append([(0, _not_slash)])  # start of a component: enter it
                eps2 |= bit  # or skip the whole `**/`
                moves.append([(1, _not_slash), (2, _slash)])  # inside: go on, or end it
        self._moves = moves
        self._eps1, self._eps2 = eps1, eps2
        self._final = 1 << len(moves)
        self._masks: dict[str, tuple[int, int, int]] = {}
        self._steps: dict[tuple[int, str], int] = {}
        self._start = self._close(1)

    def _close(self, d: int) -> int:
        while True:
            n = d | ((d & self._eps1) << 1) | ((d & self._eps2) << 2)
            if n == d:
                return d
            d = n

    def _mask(self, c: str) -> tuple[int, int, int]:
        got = self._masks.get(c)
        if got is None:
            fwd = loop = back = 0
            for j, moves in enumerate(self._moves):
                for kind, pred in moves:
                    if pred(c):
                        if kind == 0:
                            fwd |= 1 << j
                        elif kind == 1:
                            loop |= 1 << j
                        else:
                            back |= 1 << j
            got = (fwd, loop, back)
            if len(self._masks) >= _CACHE_LIMIT:
                self._masks.clear()
            self._masks[c] = got
        return got

    def match(self, text: str) -> bool:
        d = self._start
        steps = self._steps
        for c in text:
            key = (d, c)
            nxt = steps.get(key)
            if nxt is None:
                fwd, loop, back = self._mask(c)
                nxt = self._close(((d & fwd) << 1) | (d & loop) | ((d & back) >> 1))
                if len(steps) >= _CACHE_LIMIT:
                    steps.clear()
                steps[key] = nxt
            if not nxt:
                return False
            d = nxt
        return bool(d & self._final)


def compile_glob(pattern: str) -> Glob:
    """Compile a glob (raises GlobError for a bad `[a-b]` range)."""
    return Glob(pattern)


def check_user_glob(pattern: str, what: str = "pattern") -> Glob:
    """A glob sent by a user: length and wildcard count capped, so the states are few."""
    if len(pattern) > MAX_GLOB_CHARS:
        raise GlobError(f"{what}: a glob may have at most {MAX_GLOB_CHARS} characters")
    glob = Glob(pattern)
    if glob.wildcards > MAX_GLOB_WILDCARDS:
        raise GlobError(
            f"{what}: a glob may have at most {MAX_GLOB_WILDCARDS} wildcards "
            f"(*, **, ?, [...]); {pattern[:40]!r}... has {glob.wildcards}"
        )
    return glob
