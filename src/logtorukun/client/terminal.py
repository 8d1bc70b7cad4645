"""Make log text safe to print on a terminal.

A log line is written by whoever can reach the service that logs it. Printed raw, an
escape sequence in it can retitle the terminal, rewrite what was printed before (CR,
cursor movement, clear screen), hide text, plant clipboard contents (OSC 52) or, on some
terminals, answer back into the shell's input. So every control character except tab
and newline is shown in caret notation (`^[`, `^M`, `^?`), C1 controls and the Unicode
bidi overrides ("Trojan Source") as `<U+XXXX>`, and bytes that are not UTF-8 as `\\xNN`.
With `colour=True`, only plain SGR colour sequences (`ESC [ digits ; ... m`) survive, and
every line that used one ends with a reset so colour cannot leak into the next line.
"""

from __future__ import annotations

import re

_SGR = re.compile(r"\x1b\[[0-9;]{0,32}m")
# C0 except \t and \n, DEL, C1, bidi embeddings/overrides/isolates, and the BOM.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]")
_RESET = "\x1b[0m"


def _visible(m: re.Match[str]) -> str:
    o = ord(m.group())
    if o < 0x20:
        return "^" + chr(o + 0x40)
    if o == 0x7F:
        return "^?"
    return f"<U+{o:04X}>"


def neutralise(data: bytes | str, *, colour: bool = False) -> str:
    """`data` as text that prints as itself: one output line per input line, nothing else."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    lines = text.split("\n")
    out = []
    for line in lines:
        if not colour:
            out.append(_escape(line))
            continue
        parts = []
        pos = 0
        used = False
        for m in _SGR.finditer(line):
            parts.append(_escape(line[pos : m.start()]))
            parts.append(m.group())
            used = True
            pos = m.end()
        parts.append(_escape(line[pos:]))
        if used:
            parts.append(_RESET)
        out.append("".join(parts))
    return "\n".join(out)


def _escape(text: str) -> str:
    return _UNSAFE.sub(_visible, text)
