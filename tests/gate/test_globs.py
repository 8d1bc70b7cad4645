"""The glob matcher: same answers as a reference regex, and linear time by construction."""

from __future__ import annotations

import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logtorukun.gate.globs import (
    MAX_GLOB_CHARS,
    MAX_GLOB_WILDCARDS,
    GlobError,
    check_user_glob,
    compile_glob,
)


def reference(pattern: str) -> re.Pattern[str]:
    """The documented meaning as a (backtracking) regex: fine for short test inputs."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        start = i + (3 if pattern.startswith("[!", i) else 2)
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", start)) >= 0:
            body = pattern[i + 1 : end]
            neg = body.startswith("!")
            body = re.sub(r"[\\\]\[^]", lambda m: "\\" + m.group(), body[1:] if neg else body)
            out.append(f"(?!/)[{'^' if neg else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `[--]` reads oddly to `re`, fine
        return re.compile("".join(out))


PATTERN = st.text(alphabet="ab/.*?[]!-", max_size=9)
TEXT = st.text(alphabet="ab/.-]!", max_size=9)


@settings(max_examples=3000, deadline=None)
@given(PATTERN, st.lists(TEXT, min_size=1, max_size=8))
def test_same_answers_as_the_reference(pattern: str, texts: list[str]) -> None:
    try:
        rx = reference(pattern)
    except re.error:
        with pytest.raises(GlobError):
            compile_glob(pattern)
        return
    glob = compile_glob(pattern)
    for text in texts:
        assert glob.match(text) == bool(rx.fullmatch(text)), (pattern, text)


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("[!]]", ["a"], ["]", "/"]),
        ("[]a]", ["]", "a"], ["b"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a//b", "ab", "a/x/yb"]),
        ("**", ["", "a/b/c"], []),
        ("x*" * 3, ["xxx", "xaxbx"], ["x", "xx/x"]),
    ],
)
def test_edges(glob: str, yes: list[str], no: list[str]) -> None:
    g = compile_glob(glob)
    assert all(g.match(s) for s in yes), glob
    assert not any(g.match(s) for s in no), glob


def test_adversarial_patterns_take_one_step_per_character() -> None:
    """What made `re` take minutes: the matcher's work is one step per input character
    (state sets are integers, memoised), so a megabyte of text is a megabyte of steps."""
    text = "a" * 1_000_000
    for pattern in ("**" * 40 + "b", "*a" * 16 + "*b", "/**" * 16 + "/b", "*" + "?" * 200 + "b"):
        g = compile_glob(pattern)
        assert g.match(text) is False
        assert len(g._steps) <= 300  # distinct (state set, character) steps seen


def test_user_globs_are_capped_with_a_clear_reason() -> None:
    check_user_glob("/var/log/**/*.log")
    with pytest.raises(GlobError, match=f"at most {MAX_GLOB_CHARS} characters"):
        check_user_glob("a" * (MAX_GLOB_CHARS + 1), "path")
    with pytest.raises(GlobError, match=f"at most {MAX_GLOB_WILDCARDS} wildcards"):
        check_user_glob("?" * (MAX_GLOB_WILDCARDS + 1), "hosts")
    # Runs of stars count once.
    assert check_user_glob("*" * 100 + "a").wildcards == 1
    with pytest.raises(GlobError, match="bad range z-a"):
        compile_glob("[z-a]")
