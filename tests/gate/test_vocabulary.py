"""The shared request vocabulary against the gate's grammar: every request written with
`command_line` parses back into the same request, and the client's builders write
exactly those lines."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logtorukun.client.command_line import line_for
from logtorukun.gate import grammar
from logtorukun.gate.errors import GateError
from logtorukun.gate.vocabulary import (
    EXIT_MEANING,
    MAX_NUMBER,
    BridgeRequest,
    Docker,
    Exit,
    Grep,
    Head,
    Help,
    Journal,
    Range,
    Request,
    SourcesRequest,
    Tail,
    command_line,
)

# Printable ASCII without space, backslash or '/': one path component (PATH_RULE).
COMPONENT = "".join(c for c in string.printable[:94] if c not in "\\/")
components = st.text(alphabet=COMPONENT, min_size=1, max_size=12).filter(
    lambda c: c not in (".", "..")
)
paths = st.lists(components, min_size=1, max_size=4).map(lambda cs: "/" + "/".join(cs))
counts = st.integers(min_value=0, max_value=MAX_NUMBER)
maybe_counts = st.none() | counts
# A fixed-string pattern may hold anything printable, shell syntax included.
fixed = st.text(alphabet=string.printable[:95], min_size=1, max_size=30)
# An extended regex without back-references or counted repetition (refused on purpose).
regexes = st.text(alphabet=string.ascii_letters + string.digits + " .*+?|^$()[]-_", min_size=1)
times = st.sampled_from(["2024-12-17", "2024-12-17 14", "2024-12-17 14:03:05", "2024-12-17T14:03"])
journal_times = st.none() | st.sampled_from(["today", "yesterday", "-1h", "2024-12-17 14:03"])
docker_times = st.none() | st.sampled_from(["10m", "1700000000", "2024-12-17T14:03:05Z"])
units = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9@_.:-]{0,20}", fullmatch=True)
containers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@st.composite
def greps(draw: st.DrawFn) -> Grep:
    regex = draw(st.booleans())
    pattern = draw(regexes if regex else fixed)
    return Grep(
        path=draw(paths),
        pattern=pattern,
        regex=regex,
        ignore_case=draw(st.booleans()),
        invert=draw(st.booleans()),
        count=draw(st.booleans()),
        max_count=draw(maybe_counts),
        line_numbers=draw(st.booleans()),
        word=draw(st.booleans()),
        tail=draw(maybe_counts),
    )


@st.composite
def tails(draw: st.DrawFn) -> Tail:
    follow = draw(st.booleans())
    big = st.integers(min_value=0, max_value=10**19)
    tag = st.none() | st.integers(min_value=0, max_value=2**32 - 1)
    start = draw(st.none() | st.tuples(big, big, tag)) if follow else None
    before = None if follow else draw(st.none() | st.tuples(big, big))
    return Tail(draw(paths), draw(counts), follow, start, before)


requests: st.SearchStrategy[Request] = st.one_of(
    tails(),
    st.builds(Head, paths, maybe_counts),
    greps(),
    st.builds(Range, paths, times, st.none() | times, maybe_counts),
    st.builds(
        Journal,
        unit=units,
        lines=maybe_counts,
        since=journal_times,
        until=journal_times,
        grep=st.none() | regexes,
        priority=st.none() | st.sampled_from(["err", "warning", "0..3", "info"]),
        output=st.sampled_from(["short", "short-iso", "short-precise", "json", "cat"]),
        follow=st.booleans(),
    ),
    st.builds(
        Docker,
        container=containers,
        tail=maybe_counts,
        timestamps=st.booleans(),
        since=docker_times,
        until=docker_times,
        follow=st.booleans(),
    ),
    st.just(SourcesRequest()),
    st.just(BridgeRequest()),
    st.just(Help()),
)


def parsed(line: str) -> Request:
    try:
        return grammar.parse(line)
    except GateError as exc:
        raise AssertionError(f"{line!r} refused: {exc.reason}") from None


@settings(max_examples=300, deadline=None)
@given(requests)
def test_every_request_survives_its_command_line(request: Request) -> None:
    assert parsed(command_line(request)) == request


@settings(max_examples=300, deadline=None)
@given(requests)
def test_the_clients_builders_write_the_same_lines(request: Request) -> None:
    """The client checks each record's values (`line_for`), then writes it through the
    same `command_words`."""
    line = line_for(request)
    assert line == command_line(request)
    assert parsed(line) == request


def test_hostile_values_stay_values() -> None:
    evil = Grep("/var/log/a;$(id)'&.log", "'; rm -rf / #", tail=3)
    line = command_line(evil)
    assert parsed(line) == evil
    assert line.endswith(" | tail -n 3")


@pytest.mark.parametrize("code", [v for k, v in vars(Exit).items() if k.isupper()])
def test_every_exit_code_has_a_meaning(code: int) -> None:
    assert EXIT_MEANING[code]
