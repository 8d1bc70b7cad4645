"""Search patterns checked in the web server before any worker is asked.

Why here too: a pattern the worker's grep cannot compile used to come back as a 502
"worker unreachable" after an SSH round trip. The checks are the gate's own
(`gate.vocabulary.pattern_problem`: length, control characters, back-references,
bounded repetition), then a compile in the dialect the worker uses: for files `grep -E` itself
(this machine's GNU grep, run on an empty input: exit 2 means the pattern does not
compile, and its message is the reason), for systemd units (`journalctl --grep`, PCRE2)
Python's `re`, which agrees with PCRE2 on the syntax people write (a PCRE-only construct
such as `\\K` is refused here; search a file or use a plainer pattern). Both run off the
event loop; the gate's bounds keep them short.
"""

from __future__ import annotations

import asyncio
import re
import shutil

from ..gate.vocabulary import pattern_problem

GREP_SECONDS = 5.0


class BadPattern(ValueError):
    """The pattern would be refused by the worker or its grep; str() is the 422 reason."""


def check_common(pattern: str, regex: bool, kind: str = "file") -> None:
    """The gate's own checks, and for units the PCRE-like compile (cheap, bounded)."""
    why = pattern_problem(pattern, regex)
    if why is not None:
        raise BadPattern(f"invalid pattern: {why}")
    if regex and kind == "unit":
        try:
            re.compile(pattern)
        except re.error as exc:
            raise BadPattern(f"invalid pattern: {exc} in {pattern!r}") from None


async def check(pattern: str, regex: bool, kind: str = "file") -> None:
    """Raise BadPattern("invalid pattern: ...") when the worker would refuse `pattern`."""
    await asyncio.to_thread(check_common, pattern, regex, kind)
    if not regex or kind != "file":
        return
    grep = shutil.which("grep", path="/usr/bin:/bin")
    if grep is None:  # no grep here: the worker's will say it
        return
    proc = await asyncio.create_subprocess_exec(
        grep,
        "-E",
        "-e",
        pattern,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), GREP_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BadPattern("invalid pattern: grep -E took too long to compile it") from None
    if proc.returncode == 2:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if "warning" not in ln]
        why = re.sub(r"^\S*grep: ", "", lines[-1] if lines else "does not compile")
        raise BadPattern(
            f"invalid pattern: {why} in {pattern!r} (an extended regular expression, as grep -E)"
        )
