"""Compact ASCII JSON for the gate's audit records, without importing `json`.

`json` (with `re` and its scanner) is a large share of a one-shot gate's start-up, and
the gate only ever writes small records of strings, numbers, booleans, lists and dicts.
`encode(v)` is exactly `json.dumps(v, ensure_ascii=True, separators=(",", ":"),
default=str)`; tests/gate/test_jsonline.py holds the two together over hostile strings
(controls, quotes, backslashes, non-ASCII, astral characters, lone surrogates).
"""

from __future__ import annotations

__all__ = ["encode"]

# What json escapes in an ASCII string: controls, '"', '\\' and DEL (ensure_ascii keeps
# only ' '..'~' as they are).
_ESCAPES = {i: f"\\u{i:04x}" for i in (*range(0x20), 0x7F)}
_ESCAPES.update(
    {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
)


def _wide(ch: str) -> str:
    o = ord(ch)
    if o < 0x80:
        return ch
    if o < 0x10000:
        return f"\\u{o:04x}"
    o -= 0x10000  # a UTF-16 surrogate pair, as json writes it
    return f"\\u{0xD800 | (o >> 10):04x}\\u{0xDC00 | (o & 0x3FF):04x}"


def string(text: str) -> str:
    """`text` as a JSON string literal, quotes included, in ASCII."""
    if text.isascii():
        if text.isprintable() and '"' not in text and "\\" not in text:
            return f'"{text}"'
        return f'"{text.translate(_ESCAPES)}"'
    return '"' + "".join(map(_wide, text.translate(_ESCAPES))) + '"'


def _key(key: object) -> str:
    if isinstance(key, str):
        return string(key)
    if key is None or isinstance(key, int | float):  # bool is an int
        return f'"{encode(key)}"'
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return int.__repr__(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def encode(value: object) -> str:
    """`value` as one line of compact, ASCII-only JSON (unknown types as their str())."""
    if isinstance(value, str):
        return string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(encode, value)) + "]"
    return string(str(value))
