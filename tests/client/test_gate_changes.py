"""The two gate changes made for bridge throughput keep the gate's behaviour exactly.

(The gate's own tests cover the grammar; these pin the equivalences the changes rely on.)
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logtorukun.gate import grammar, vocabulary
from logtorukun.gate.errors import GateError

PLAIN = "abcxyzABCXYZ0189 ./_:=,@+%-"
ANY = PLAIN + "'\"\\|;&<>()$`*?[]~#\t\n\x00é"


def _slow(command: str, monkeypatch: pytest.MonkeyPatch) -> list[str | object] | str:
    monkeypatch.setattr(grammar, "is_plain", lambda command: False)
    try:
        return grammar.tokenize(command)
    except GateError as exc:
        return exc.reason
    finally:
        monkeypatch.undo()


def _fast(command: str) -> list[str | object] | str:
    try:
        return grammar.tokenize(command)
    except GateError as exc:
        return exc.reason


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ANY, max_size=40))
def test_fast_tokenizer_agrees_with_the_full_one(command: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        assert _fast(command) == _slow(command, mp)


def test_fast_path_is_only_for_plain_text() -> None:
    assert grammar.is_plain("tail -n 200 /var/log/worker/app.log")
    for ch in "'\"\\|;&<>()$`*?[]~#\t\n\x00é":
        assert not grammar.is_plain(f"tail -n 5 /x{ch}"), repr(ch)


def test_parsing_is_pure_and_requests_are_frozen() -> None:
    """(There is no parse cache any more: the bridge parses each request once,
    tests/gate/test_runner.py::test_a_bridge_request_is_parsed_once.)"""
    command = "tail -n 7 /var/log/cache-test.log"
    first = grammar.parse(command)
    assert grammar.parse(command) == first
    with pytest.raises(GateError):
        grammar.parse("tail -n 7 /var/log/../x.log")
    assert isinstance(first, vocabulary.Tail)
    with pytest.raises(AttributeError):
        first.lines = 8  # type: ignore[misc]  # frozen: a request cannot change
