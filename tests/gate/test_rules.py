"""The gate checks names, paths and counts with str methods (no `re` at start-up); the
patterns in vocabulary.py stay the written rule. Each check agrees with its pattern on
any text, hostile text included."""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logtorukun.gate import grammar, vocabulary

# Characters near every class boundary, plus what an attacker would try.
EDGES = (
    string.printable
    + "\x00\x1f\x7f\x80\xa0\xad\u00e9\u0131\u017f\u212a\u2028\ufeff\ud800\udcff"
    + "\uff10\uff11\uff19\u0660\u06f1\u0966\U0001d7d8\U0001f600"
)
texts = st.text(alphabet=EDGES, max_size=300) | st.text(max_size=40)

CHECKS = [
    (vocabulary.is_path, vocabulary.PATH_RULE),
    (vocabulary.is_count, grammar._NUMBER),
    (vocabulary.is_unit_name, vocabulary.UNIT_NAME),
    (vocabulary.is_container_name, vocabulary.CONTAINER_NAME),
    (grammar.is_plain, "[" + re.escape(grammar.PLAIN_CHARS) + "]*"),
]


@pytest.mark.parametrize(("check", "rule"), CHECKS, ids=lambda c: getattr(c, "__name__", ""))
@settings(max_examples=600, deadline=None)
@given(text=texts)
@example(text="")
@example(text="/")
@example(text="/var/log/app.log")
@example(text="/var/log/a\\b")
@example(text="/var/log/a b")
@example(text="123456789")
@example(text="1234567890")
@example(text="\uff11\uff12")  # fullwidth digits
@example(text="a" * 255)
@example(text="a" * 256)
@example(text="b" * 128)
@example(text="b" * 129)
@example(text="-unit")
@example(text="_unit@x:y.service")
@example(text="tail -n 200 /var/log/app.log")
def test_the_str_check_agrees_with_the_pattern(
    check: Callable[[str], bool], rule: str, text: str
) -> None:
    assert check(text) == bool(re.fullmatch(rule, text)), (check.__name__, text)


@pytest.mark.parametrize(("check", "rule"), CHECKS, ids=lambda c: getattr(c, "__name__", ""))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_texts_the_pattern_accepts_are_accepted(
    check: Callable[[str], bool], rule: str, data: st.DataObject
) -> None:
    """Random text rarely fits a pattern; texts drawn *from* each pattern do."""
    text = data.draw(st.from_regex(rule, fullmatch=True))
    assert check(text) == bool(re.fullmatch(rule, text)), (check.__name__, text)
