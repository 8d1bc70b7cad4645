"""Log text on a terminal: nothing in it may act on the terminal."""

from __future__ import annotations

import pytest

from logtorukun.client.terminal import neutralise

ESCAPES = [
    ("\x1b]0;title\x07", "^[]0;title^G"),  # set window title
    ("\x1b]52;c;ZXZpbA==\x07", "^[]52;c;ZXZpbA==^G"),  # OSC 52: write the clipboard
    ("\x1b[2J\x1b[H", "^[[2J^[[H"),  # clear screen, cursor home
    ("\x1b[6n", "^[[6n"),  # ask the terminal to answer into our input
    ("\x1bP+q544e\x1b\\", "^[P+q544e^[\\"),  # DCS query
    ("a\rb", "a^Mb"),  # overwrite the start of the line
    ("a\bb", "a^Hb"),
    ("\x00\x7f", "^@^?"),
    ("\u009b31m", "<U+009B>31m"),  # 8-bit CSI
    ("\u0085", "<U+0085>"),  # NEL
    ("\u202eevil\u202c", "<U+202E>evil<U+202C>"),  # Trojan Source bidi override
    ("\u2066x\u2069", "<U+2066>x<U+2069>"),
    ("\ufeff", "<U+FEFF>"),
]


@pytest.mark.parametrize(("raw", "shown"), ESCAPES)
def test_controls_are_shown_not_obeyed(raw: str, shown: str) -> None:
    assert neutralise(raw) == shown
    assert neutralise(raw, colour=True) == shown  # none of these is a colour


def test_text_tabs_newlines_and_unicode_stay() -> None:
    text = "2024-12-17 14:30:00 INFO\t通知を送信しました é ✓\nnext line\n"
    assert neutralise(text) == text
    assert neutralise(text.encode()) == text


def test_invalid_utf8_is_shown_as_hex() -> None:
    assert neutralise(b"ok \xff\xfe \xc3") == "ok \\xff\\xfe \\xc3"


def test_colour_mode_keeps_only_sgr_and_resets_each_line() -> None:
    line = "\x1b[1;31mERROR\x1b[0m \x1b]0;x\x07 \x1b[2J plain"
    out = neutralise(line + "\nsecond", colour=True)
    first, second = out.split("\n")
    assert first == "\x1b[1;31mERROR\x1b[0m ^[]0;x^G ^[[2J plain\x1b[0m"
    assert second == "second"
    # a sequence with a huge parameter list is not SGR-shaped: shown, not obeyed
    long = "\x1b[" + "1;" * 40 + "m"
    assert "\x1b" not in neutralise(long, colour=True)


def test_every_control_is_escaped() -> None:
    everything = "".join(chr(i) for i in range(0x00, 0xA0)) + "\u202a\u202b\u202d\u2067\u2068"
    out = neutralise(everything)
    assert "\n" in out and "\t" in out
    assert all(c.isprintable() or c in "\n\t" for c in out)
