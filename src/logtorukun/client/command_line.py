"""A typed request (gate/vocabulary.py) → the gate's command line, checked on the way.

Every value is quoted with `shlex.quote`, then the line is split again and compared with
what was meant, so no value can change the command's shape (the gate re-parses and
re-checks everything anyway). Values the gate would refuse for sure (control characters,
relative paths, counts out of range) are refused here first with a clearer message.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..gate.protocol import MAX_REQUEST
from ..gate.vocabulary import (
    MAX_NUMBER,
    MAX_PATH,
    MAX_PATTERN,
    Docker,
    Grep,
    Head,
    Journal,
    Range,
    Request,
    Tail,
    command_words,
    join_words,
)
from .errors import InvalidArgument

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"[A-Za-z0-9@_.:][A-Za-z0-9@_.:+-]{0,254}")
_OFFSET = 10**20  # inodes and offsets: 64-bit on any file system, with room to spare
_TAG = 2**32  # readers.tag_at is a CRC-32
_T = TypeVar("_T")


def quote_command(argv: Sequence[str], pipe_tail: int | None = None) -> str:
    """Join argv for the gate with every word quoted; re-split to prove nothing leaked."""
    return _quote(tuple(argv), pipe_tail)


@functools.lru_cache(maxsize=4096)  # the re-split costs more than the request itself
def _quote(argv: tuple[str, ...], pipe_tail: int | None) -> str:
    for word in argv:
        if not isinstance(word, str):
            raise InvalidArgument("", f"command word {word!r} is not a string")
        if _CONTROL.search(word):
            raise InvalidArgument("", f"control character in {word[:60]!r}: refused")
    command = join_words(list(argv), None if pipe_tail is None else int(pipe_tail))
    expect = list(argv)
    if pipe_tail is not None:
        expect += ["|", "tail", "-n", str(int(pipe_tail))]
    if shlex.split(command) != expect:  # pragma: no cover - shlex.quote guarantees this
        raise InvalidArgument("", f"cannot quote {list(argv)!r} safely")
    return command


def line_for(request: Request) -> str:
    """The gate's command line for `request`, quoted and checked; InvalidArgument names
    what is wrong."""
    _check(request)
    words, pipe_tail = command_words(request)
    return quote_command(words, pipe_tail)


def check_via(via: dict[str, Any] | None) -> dict[str, Any] | None:
    """`via` must be a small JSON object: it lands in the worker's audit record."""
    if via is None:
        return None
    if not isinstance(via, dict) or not all(isinstance(k, str) for k in via):
        raise InvalidArgument("", "via must be a dict with string keys")
    try:
        size = len(json.dumps(via, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("", f"via is not JSON: {exc}") from None
    if size > MAX_REQUEST // 2:
        raise InvalidArgument("", f"via is {size} bytes of JSON; keep it under {MAX_REQUEST // 2}")
    return via


# ---------------------------------------------------------------------- the checks


def _check(r: Request) -> None:
    """Refuse what the gate would refuse for sure; sources and help have no values."""
    if isinstance(r, Tail):
        _count("lines", r.lines)
        if r.start is not None:
            if not r.follow:
                raise InvalidArgument("", "a start position only goes with a follow")
            if not _is_start(r.start):
                raise InvalidArgument("", f"start must be (inode, offset, tag), not {r.start!r}")
        if r.before is not None and (r.follow or not _offsets(r.before)):
            raise InvalidArgument("", f"before must be (inode, offset) of a read, not {r.before!r}")
        _path(r.path)
    elif isinstance(r, Head):
        _maybe(_count, "lines", r.lines)
        _path(r.path)
    elif isinstance(r, Grep):
        _maybe(_count, "max_count", r.max_count)
        _text("pattern", r.pattern)
        _path(r.path)
        _maybe(_count, "last", r.tail)
    elif isinstance(r, Range):
        _text("since", r.since)
        _maybe(_text, "until", r.until)
        _maybe(_count, "max_lines", r.max_lines)
        _path(r.path)
    elif isinstance(r, Journal):
        _name("unit", r.unit)
        _maybe(_count, "lines", r.lines)
        _maybe(_text, "since", r.since)
        _maybe(_text, "until", r.until)
        _maybe(_text, "grep", r.grep)
        _maybe(_name, "priority", r.priority)
        _name("output", r.output)
    elif isinstance(r, Docker):
        _maybe(_count, "tail", r.tail)
        _maybe(_text, "since", r.since)
        _maybe(_text, "until", r.until)
        _name("container", r.container)


def _offsets(values: tuple[Any, ...]) -> bool:
    return all(type(x) is int and 0 <= x < _OFFSET for x in values)


def _is_start(start: Any) -> bool:
    """(inode, offset, tag): `Status.pos` or `Position.start`; a tag of None: no tag."""
    if not (isinstance(start, tuple) and len(start) == 3 and _offsets(start[:2])):
        return False
    tag = start[2]
    return tag is None or (type(tag) is int and 0 <= tag < _TAG)


def _path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument("", f"path must be absolute: {path!r}")
    if len(path) > MAX_PATH:
        raise InvalidArgument("", f"path longer than {MAX_PATH} characters")
    return path


def _count(what: str, n: int | None) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise InvalidArgument("", f"{what} must be a whole number from 0, not {n!r}")
    return n


def _text(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument("", f"{what} must be a non-empty string")
    if len(value) > MAX_PATTERN:
        raise InvalidArgument("", f"{what} longer than {MAX_PATTERN} characters")
    return value


def _name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgument("", f"{what} {value!r} is not a plain name")
    return value


def _maybe(check: Callable[[str, _T], object], what: str, value: _T | None) -> None:
    if value is not None:
        check(what, value)
