"""The audit record's JSON, written without `json`, is byte for byte what `json.dumps`
would write (ASCII only, compact, `default=str`), hostile strings included."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from logtorukun.gate.jsonline import encode


def reference(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


# Every control character, quote, backslash, DEL, Latin-1, BMP, lone surrogates and
# astral characters: what a hostile command, `via` or SSH_CLIENT could hold.
HOSTILE = "".join(map(chr, range(0x00, 0xA1))) + "\u2028\u2029\ufeff\ud800\udbff\udc00\udfff"
strings = st.text(alphabet=HOSTILE, max_size=60) | st.text(max_size=60)
scalars = (
    strings
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(strings, inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(values)
@example('\x00\x1f\x7f"\\\b\f\n\r\t/')
@example("\ud800")
@example("\U0001f600\U0010ffff")
@example({"command": "tail -n 1 /x\x1b[31m", "via": {"user": "é\u2028"}})
def test_same_text_as_json_dumps(value: object) -> None:
    line = encode(value)
    assert line == reference(value)
    assert line.isascii() and "\n" not in line


def test_keys_and_unknown_types_as_json_writes_them() -> None:
    value = {1: "a", 2.5: "b", False: "c", None: "d", "x": frozenset({1}), "p": b"\xff"}
    assert encode(value) == reference(value)
    assert encode({"inf": math.inf, "ninf": -math.inf}) == reference(
        {"inf": math.inf, "ninf": -math.inf}
    )
