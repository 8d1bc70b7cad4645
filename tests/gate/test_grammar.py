"""grammar.parse: the command line -> one typed request, or a one-line refusal.

Pure parsing, no files: every hostile line here must be refused *by the parser* with
BAD_REQUEST and a reason that names what was wrong. The same lines go through a real
sshd in test_attacks.py; here they are cheap, so the corpus is wide.
"""

from __future__ import annotations

import re

import pytest

from logtorukun.gate import grammar, vocabulary
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.vocabulary import Docker, Grep, Head, Help, Journal, SourcesRequest, Tail

LOG = "/var/log/worker/app.log"


def refused(command: str, match: str) -> GateError:
    with pytest.raises(GateError) as info:
        grammar.parse(command)
    exc = info.value
    assert exc.code == Exit.BAD_REQUEST, (command, exc.reason)
    assert "\n" not in exc.reason and "\r" not in exc.reason and exc.reason.isprintable()
    assert re.search(match, exc.reason), (command, exc.reason)
    return exc


# ---------------------------------------------------------------- docs/gate.md's command lines


def test_brief_commands_parse_as_written() -> None:
    assert grammar.parse(f"tail -n 200 {LOG}") == Tail(LOG, 200, False)
    assert grammar.parse(f"grep 'ERROR' {LOG} | tail -n 100") == Grep(LOG, "ERROR", tail=100)
    assert grammar.parse(f"grep '2024-12-17 14:' {LOG}") == Grep(LOG, "2024-12-17 14:")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (f"tail -n5 {LOG}", Tail(LOG, 5)),
        (f"tail --lines=5 {LOG}", Tail(LOG, 5)),
        (f"tail --lines 5 {LOG}", Tail(LOG, 5)),
        (f"tail -F {LOG}", Tail(LOG, 10, True)),
        (f"tail -f -n 3 {LOG}", Tail(LOG, 3, True)),
        (f"tail -Fn 3 {LOG}", Tail(LOG, 3, True)),
        (f"tail -F -n 0 --from 1234:56789 {LOG}", Tail(LOG, 0, True, (1234, 56789, None))),
        (f"tail -n 50 --before 12:3400 {LOG}", Tail(LOG, 50, False, None, (12, 3400))),
        (f"tail -f --from=7:0:4294967295 {LOG}", Tail(LOG, 10, True, (7, 0, 4294967295))),
        (f"head -n 3 {LOG}", Head(LOG, 3)),
        (f"cat {LOG}", Head(LOG, None)),
        (f"grep -iv x {LOG}", Grep(LOG, "x", ignore_case=True, invert=True)),
        (f"grep -E -c -m5 'a|b' {LOG}", Grep(LOG, "a|b", regex=True, count=True, max_count=5)),
        (
            f"grep --max-count=7 -nw x {LOG}",
            Grep(LOG, "x", max_count=7, line_numbers=True, word=True),
        ),
        (f'grep "a \\"b\\" \\\\c" {LOG}', Grep(LOG, 'a "b" \\c')),
        (f"grep a\\ b {LOG}", Grep(LOG, "a b")),
        (f"grep x{LOG[:5]}'' {LOG}", Grep(LOG, "x/var/")),
        # the quote decides: shell syntax inside single quotes is data for grep
        (f"grep '$(id); `id` && x || y > z' {LOG}", Grep(LOG, "$(id); `id` && x || y > z")),
        (f"grep 'a|b' {LOG}", Grep(LOG, "a|b")),
        (f"grep 'ログ 通知' {LOG}", Grep(LOG, "ログ 通知")),
        (
            "journalctl -u worker-service -n 5 --since -1h -p err..warning -o json --no-pager",
            Journal("worker-service", lines=5, since="-1h", priority="err..warning", output="json"),
        ),
        ("docker logs --tail 20 -t worker-container", Docker("worker-container", 20, True)),
        ("docker logs --tail all worker-container", Docker("worker-container")),
        ("sources", SourcesRequest()),
        ("  help  ", Help()),
    ],
)
def test_accepted_forms(command: str, expected: vocabulary.Request) -> None:
    assert grammar.parse(command) == expected


# ---------------------------------------------------------------- option injection


@pytest.mark.parametrize(
    ("command", "pattern"),
    [
        # a pattern that looks like an option is still a pattern
        (f"grep -e -r {LOG}", "-r"),
        (f"grep -e '-f' {LOG}", "-f"),
        (f"grep -e --include=x {LOG}", "--include=x"),
        (f"grep -e=x {LOG}", "=x"),  # attached value of -e, not an option
        (f"grep -- -r {LOG}", "-r"),
        (f"grep -- '-f' {LOG}", "-f"),
        (f"grep -- --file=/etc/shadow {LOG}", "--file=/etc/shadow"),
        (f"grep --regexp=-v {LOG}", "-v"),
        (f"grep -F -e '--' {LOG}", "--"),
    ],
)
def test_a_pattern_starting_with_dash_stays_a_pattern(command: str, pattern: str) -> None:
    req = grammar.parse(command)
    assert isinstance(req, Grep)
    assert (req.pattern, req.path) == (pattern, LOG)
    assert not (req.invert or req.count or req.regex or req.ignore_case)


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (f"grep -f /etc/shadow x {LOG}", r"option -f is not accepted"),
        (f"grep -fx {LOG}", r"option -f is not accepted"),
        (f"grep --file=/etc/shadow {LOG}", r"option --file is not accepted"),
        (f"grep -r root {LOG}", r"option -r is not accepted"),
        ("grep -R root /var/log/worker", r"option -R is not accepted"),
        (f"grep --recursive x {LOG}", r"option --recursive"),
        (f"grep '--include=*.log' x {LOG}", r"option --include is not accepted"),
        (f"grep --exclude-dir=x x {LOG}", r"option --exclude-dir"),
        (f"grep -d recurse x {LOG}", r"option -d is not accepted"),
        (f"grep -P x {LOG}", r"option -P is not accepted"),
        (f"grep -A 5 x {LOG}", r"option -A"),
        (f"grep -z x {LOG}", r"option -z"),
        (f"grep --binary-files=text x {LOG}", r"option --binary-files"),
        (f"grep --color=always x {LOG}", r"option --color"),
        (f"grep -ivf /etc/shadow {LOG}", r"option -f"),
        (f"grep -e x -e y {LOG}", r"one pattern"),
        (f"grep -F -E x {LOG}", r"exclude each other"),
        (f"grep x {LOG} /etc/shadow", r"expected one PATH"),
        (f"grep x {LOG} {LOG}", r"expected one PATH"),
        (f"grep -e x {LOG} /etc/shadow", r"expected one PATH"),
        ("grep x", r"expected one PATH"),
        ("grep", r"expected PATTERN PATH"),
        (f"grep -m -1 x {LOG}", r"-m takes a whole number"),
        (f"grep -e {LOG}", r"expected one PATH"),
        ("grep -e", r"-e needs a value"),
        (f"grep '' {LOG}", r"empty pattern"),
        (f"tail --pid=1 {LOG}", r"option --pid is not accepted"),
        (f"tail --pid 1 -f {LOG}", r"option --pid is not accepted"),
        (f"tail -c 100 {LOG}", r"option -c is not accepted"),
        (f"tail --bytes=100 {LOG}", r"option --bytes"),
        (f"tail -s 0 -f {LOG}", r"option -s"),
        (f"tail --sleep-interval=0 -f {LOG}", r"option --sleep-interval"),
        (f"tail -z -n 1 {LOG}", r"option -z"),
        (f"tail -q -n 1 {LOG}", r"option -q"),
        (f"tail -n -5 {LOG}", r"whole number"),
        (f"tail -n +5 {LOG}", r"whole number"),
        (f"tail -n 1e3 {LOG}", r"whole number"),
        (f"tail -n 0x10 {LOG}", r"whole number"),
        (f"tail -n 1234567890 {LOG}", r"whole number"),
        (f"tail -n \uff15 {LOG}", r"whole number"),  # fullwidth digit five
        (f"tail -n \u0665 {LOG}", r"whole number"),  # Arabic-Indic five: \d would take it
        (f"tail -n 5 {LOG} /etc/shadow", r"expected one PATH"),
        (f"tail {LOG}", r"say how many lines"),
        (f"tail -n 5 --from 1:2 {LOG}", r"--from only goes with -f"),
        (f"tail -F --from 12 {LOG}", r"--from takes INODE:OFFSET\[:TAG\]"),
        (f"tail -F --from -1:2 {LOG}", r"--from takes INODE:OFFSET\[:TAG\]"),
        (f"tail -F --from 1:\u0665 {LOG}", r"--from takes INODE:OFFSET\[:TAG\]"),
        (f"tail -F --from 1:{'9' * 21} {LOG}", r"--from takes INODE:OFFSET\[:TAG\]"),
        (f"tail -F --from 1:2:{'9' * 11} {LOG}", r"--from takes INODE"),
        (f"tail -F --from 1:2:3:4 {LOG}", r"--from takes INODE"),
        ("tail -F --from", r"--from needs a value"),
        (f"tail -F --before 1:2 {LOG}", r"--before goes with -n N"),
        (f"tail -n 5 --before 1:2:3 {LOG}", r"--before takes INODE:OFFSET"),
        ("tail -n", r"-n needs a value"),
        (f"head {LOG}", r"say how many lines"),
        (f"cat -v {LOG}", r"option -v is not accepted"),
        (f"cat {LOG} /etc/shadow", r"expected one PATH"),
    ],
)
def test_option_injection_is_refused(command: str, match: str) -> None:
    refused(command, match)


# ---------------------------------------------------------------- shell syntax


@pytest.mark.parametrize(
    ("command", "match"),
    [
        ("'; cat /etc/passwd; echo '", r"unknown command"),
        (f"tail -n 5 '{LOG}'; cat /etc/passwd; echo ''", r"shell syntax ';'"),
        (f"tail -n 5 {LOG}'; cat /etc/passwd; echo '", r"path must be absolute and plain ASCII"),
        (f"tail -n 5 {LOG};cat /etc/shadow", r"shell syntax ';'"),
        (f"tail -n 5 {LOG} ; id", r"shell syntax ';'"),
        (f"tail -n 5 {LOG} && cat /etc/shadow", r"shell syntax '&'"),
        (f"tail -n 5 {LOG} & id", r"shell syntax '&'"),
        (f"tail -n 5 {LOG} || cat /etc/shadow", r"'\|' is only accepted as"),
        (f"grep x {LOG} || tail -n 5", r"'\|' is only accepted as"),
        (f"grep x {LOG} | cat /etc/shadow", r"'\|' is only accepted as"),
        (f"grep x {LOG} | sh", r"'\|' is only accepted as"),
        (f"grep x {LOG} | tail -f", r"option -f is not accepted"),
        (f"grep x {LOG} | tail -n 5 /etc/shadow", r"'\|' is only accepted as"),
        (f"grep x {LOG} | tail -n 5 | tail -n 1", r"'\|' is only accepted as"),
        (f"grep x {LOG} | tail", r"'\|' is only accepted as"),
        (f"grep x {LOG} |", r"'\|' is only accepted as"),
        (f"tail -n 5 {LOG} | tail -n 1", r"'\|' is only accepted as"),
        (f"| tail -n 5 {LOG}", r"'\|' is only accepted as"),
        (f"tail -n 5 $(echo {LOG})", r"shell syntax '\$'"),
        (f"tail -n 5 {LOG}$(id)", r"shell syntax '\$'"),
        ('tail -n 5 "$(cat /etc/shadow)"', r"shell expansion '\$'"),
        (f"tail -n 5 `echo {LOG}`", r"shell syntax '`'"),
        (f'grep "`id`" {LOG}', r"shell expansion '`'"),
        (f"tail${{IFS}}-n${{IFS}}5${{IFS}}{LOG}", r"shell syntax '\$'"),
        (f"tail -n 5 {LOG};echo${{IFS}}x", r"shell syntax ';'"),
        (f'grep "${{IFS}}" {LOG}', r"shell expansion '\$'"),
        (f"tail -n 5 {LOG}\ncat /etc/shadow", r"control character 0x0a"),
        (f"tail -n 5 {LOG}\rcat /etc/shadow", r"control character 0x0d"),
        (f"tail -n 5 {LOG}\r\n", r"control character 0x0d"),
        (f"tail\t-n\t5\t{LOG}", r"control character 0x09"),
        (f"grep '\x1b[2J' {LOG}", r"control character 0x1b"),
        (f"grep '\x7f' {LOG}", r"control character 0x7f"),
        (f"grep 'a\x00b' {LOG}", r"control character 0x00"),
        (f"tail -n 5 {LOG}\x00/etc/shadow", r"control character 0x00"),
        (f"tail -n 5 {LOG} > /tmp/x", r"shell syntax '>'"),
        (f"tail -n 5 {LOG} >> /tmp/x", r"shell syntax '>'"),
        (f"tail -n 5 {LOG} 2>&1", r"shell syntax '>'"),
        ("tail -n 5 < /etc/shadow", r"shell syntax '<'"),
        ("grep x - < /etc/shadow", r"shell syntax '<'"),
        ("tail -n 5 <(cat /etc/shadow)", r"shell syntax '<'"),
        (f"(tail -n 5 {LOG})", r"shell syntax '\('"),
        ("tail -n 5 /var/log/worker/*.log", r"wildcard '\*'"),
        ("tail -n 5 /var/log/worker/app.lo?", r"wildcard '\?'"),
        ("tail -n 5 /var/log/worker/app.[l]og", r"wildcard '\['"),
        ("tail -n 5 ~/.ssh/id_ed25519", r"'~' at the start"),
        (f"tail -n 5 {LOG} #comment", r"'#' at the start"),
        (f"tail -n 5 '{LOG}", r"unterminated ' quote"),
        (f'tail -n 5 "{LOG}', r'unterminated " quote'),
        (f"tail -n 5 {LOG}\\", r"trailing backslash"),
        ("sh -c 'cat /etc/shadow'", r"unknown command 'sh'"),
        ("bash", r"unknown command 'bash'"),
        ("/bin/cat /etc/shadow", r"unknown command '/bin/cat'"),
        ("python3 -c 'print(1)'", r"unknown command 'python3'"),
        ("scp -f /etc/shadow", r"unknown command 'scp'"),
        ("rsync --server --sender . /etc/", r"unknown command 'rsync'"),
        ("sftp", r"unknown command 'sftp'"),
        ("internal-sftp", r"unknown command"),
        ("env", r"unknown command 'env'"),
        ("", r"empty command"),
        ("   ", r"empty command"),
        ("sources --all", r"sources takes no arguments"),
        ("bridge x", r"bridge takes no arguments"),
        ("help me", r"help takes no arguments"),
    ],
)
def test_shell_syntax_is_refused(command: str, match: str) -> None:
    refused(command, match)


def test_unknown_verb_is_shown_escaped_and_short() -> None:
    exc = refused("\u202ecat /etc/shadow", r"unknown command")
    assert "\u202e" not in exc.reason  # a bidi override is not echoed raw
    exc = refused("x" * 300, r"unknown command")
    assert len(exc.reason) < 200


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/var/log/worker/../../../etc/shadow", r"'\.\.' components"),
        ("/var/log/worker/..", r"'\.\.' components"),
        ("/var/log/../log/worker/app.log", r"'\.\.' components"),
        ("/var/log/worker/./app.log", r"'\.\.' components"),
        ("/var/log/worker//app.log", r"empty"),
        ("/var/log/worker/", r"empty"),
        ("/", r"empty"),
        ("var/log/worker/app.log", r"must be absolute"),
        ("app.log", r"must be absolute"),
        ("./app.log", r"must be absolute"),
        ("../../etc/shadow", r"must be absolute"),
        ("-/etc/shadow", r"option -/ is not accepted|not an accepted option or an absolute path"),
        # look-alikes and encodings that another layer might decode into '/' or '..'
        ("/var/log/worker\uff0f..\uff0fsecret", r"plain ASCII"),  # fullwidth solidus
        ("/var/log/worker/\u0430pp.log", r"plain ASCII"),  # Cyrillic a
        ("/var/log/w\u043erker/app.log", r"plain ASCII"),  # Cyrillic o
        ("/var/log/worker/app\u2024log", r"plain ASCII"),  # one dot leader
        ("/var/log/worker/\u2025/secret", r"plain ASCII"),  # two dot leader
        ("/var/log/worker/\udcc0\udcae\udcc0\udcae/x.log", r"not valid UTF-8"),  # overlong '.'
        ("/var/log/worker/\u00a0app.log", r"plain ASCII"),  # no-break space
        ("/var/log/worker/app.log\u200b", r"plain ASCII"),  # zero width space
        ("/var/log/worker\\..\\secret", r"plain ASCII"),
    ],
)
def test_bad_paths_are_refused(path: str, match: str) -> None:
    for verb in ("tail -n 1", "tail -F", "grep x", "head -n 1", "cat"):
        refused(f"{verb} '{path}'", match)


@pytest.mark.parametrize(
    "path",
    [
        "/var/log/worker/%2e%2e/%2e%2e/etc/shadow",  # percent-encoding is not decoded: data
        "/var/log/worker/..%2f..%2fetc%2fshadow",
        "/var/log/worker/%c0%ae%c0%ae/x.log",
        "/var/log/worker/...",
        "/var/log/worker/..app.log",
        "/var/log/worker/app.log..",
    ],
)
def test_encoded_traversal_is_just_a_file_name(path: str) -> None:
    """The gate decodes nothing: these are literal names the policy then has to admit."""
    req = grammar.parse(f"tail -n 1 {path}")
    assert req == Tail(path, 1)


def test_path_and_command_length_caps() -> None:
    long_path = "/var/log/worker/" + "a" * vocabulary.MAX_PATH + ".log"
    refused(f"tail -n 1 {long_path}", r"path longer than 1024")
    base = f"tail -n 1 {LOG}"
    assert grammar.parse(base + " " * (vocabulary.MAX_COMMAND - len(base))) == Tail(LOG, 1)
    refused(
        base + " " * (vocabulary.MAX_COMMAND + 1 - len(base)), r"command longer than 4096 bytes"
    )
    refused(f"grep {'x' * (vocabulary.MAX_PATTERN + 1)} {LOG}", r"pattern longer than 1024")
    # the cap is in bytes, not characters: 1366 three-byte characters are 4098 bytes
    refused("\u3042" * 1366, r"command longer than 4096 bytes")
    refused("x" * 100_000, r"command longer than 4096 bytes")


# ---------------------------------------------------------------- regex


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        (r"(a*)*\1", r"back-references are refused"),
        (r"(a)\9", r"back-references"),
        (r"^(.+)\1$", r"back-references"),
        ("a{99999}", r"repetition count 99999 is over 255"),
        ("a{1,99999}", r"repetition count 99999"),
        ("a{,300}", r"repetition count 300"),
        ("(ab){256}", r"repetition count 256"),
        ("x{0000000256}", r"repetition count 0000000256"),
        ("(a{255}){255}", r"nested repetition counts multiply to 65025 \(at most 255\)"),
        ("((a{255}){255}){255}", r"multiply to 16581375"),
        ("(a{1,255}){1,255}", r"multiply to 65025"),
        ("(x(a{16}|b){16})", r"multiply to 256"),
        ("(a{2,}){200}", r"multiply to 400"),
        ("[0-9]{1,255}" * 33, r"expand the pattern to 8415 atoms \(at most 8192\)"),
    ],
)
def test_regex_bombs_are_refused_in_regex_mode(pattern: str, match: str) -> None:
    refused(f"grep -E '{pattern}' {LOG}", match)
    refused(f"grep --extended-regexp -e '{pattern}' {LOG}", match)
    refused(f"journalctl -u worker-service -g '{pattern}'", match)
    # in the default fixed-string mode they are plain text and harmless
    req = grammar.parse(f"grep '{pattern}' {LOG}")
    assert isinstance(req, Grep) and req.pattern == pattern and not req.regex


def test_bounded_repetition_is_accepted() -> None:
    req = grammar.parse(f"grep -E 'a{{255}}|b{{1,255}}' {LOG}")
    assert isinstance(req, Grep) and req.regex
    for ok in ("((a{15}){17})", r"[0-9]{1,3}(\.[0-9]{1,3}){3}", "[0-9]{1,255}" * 32):
        assert isinstance(grammar.parse(f"grep -E '{ok}' {LOG}"), Grep)


@pytest.mark.parametrize(
    ("pattern", "cost"),
    [
        ("abc", (1, 3)),
        ("a{255}", (255, 255)),
        ("(ab){3}c", (3, 7)),
        ("(a|b){1,100}(c|d){1,100}x", (100, 401)),
        ("a*b+c?", (1, 3)),
        ("[]{]{5}", (5, 5)),  # a bracket that starts with ] holds the brace
        ("[[:alpha:]]{4}", (4, 4)),
        (r"\{2}", (1, 3)),  # an escaped brace is a literal, so is what follows
        ("x{}", (1, 3)),
        ("((a{3}){5}){7}", (105, 105)),
        ("((a", (1, 1)),  # unbalanced: grep refuses it; the scan must not crash
    ],
)
def test_repetition_cost(pattern: str, cost: tuple[int, int]) -> None:
    assert vocabulary.repetition_cost(pattern) == cost


@pytest.mark.parametrize(
    "ch", ["\u200b", "\u202e", "\u2028", "\u2029", "\u0085", "\ue000", "\ufeff"]
)
def test_invisible_characters_in_patterns_are_refused(ch: str) -> None:
    refused(f"grep 'a{ch}b' {LOG}", r"invisible or control character")


# ---------------------------------------------------------------- journalctl / docker


@pytest.mark.parametrize(
    ("command", "match"),
    [
        ("journalctl -u worker-service _SYSTEMD_UNIT=sshd.service", r"match expressions"),
        ("journalctl -u worker-service + _SYSTEMD_UNIT=sshd.service", r"match expressions"),
        ("journalctl _SYSTEMD_UNIT=sshd.service", r"match expressions"),
        ("journalctl -u worker-service /usr/sbin/sshd", r"match expressions"),
        ("journalctl -u worker-service -- -u sshd", r"match expressions"),
        ("journalctl", r"exactly one -u UNIT"),
        ("journalctl -u a -u b", r"exactly one -u UNIT"),
        ("journalctl -u worker-service -D /var/log/journal", r"option -D"),
        ("journalctl -u worker-service --directory=/", r"option --directory"),
        ("journalctl -u worker-service --file=/etc/shadow", r"option --file"),
        ("journalctl -u worker-service --root=/", r"option --root"),
        ("journalctl -u worker-service -M other", r"option -M"),
        ("journalctl -u worker-service -m", r"option -m"),
        ("journalctl -u worker-service -k", r"option -k"),
        ("journalctl -u worker-service --system", r"option --system"),
        ("journalctl -u worker-service --user-unit=x", r"option --user-unit"),
        ("journalctl -u worker-service -t sshd", r"option -t"),
        ("journalctl -u worker-service -o verbose", r"-o 'verbose' is not accepted"),
        ("journalctl -u worker-service -o export", r"-o 'export'"),
        ("journalctl -u worker-service -p 9", r"not a priority"),
        ("journalctl -u worker-service -p 'err x'", r"not a priority"),
        ("journalctl -u worker-service --since 'now; id'", r"not a time"),
        ("journalctl -u worker-service --since '@0'", r"not a time"),
        ("journalctl -u worker-service --since 'tomorrow'", r"not a time"),
        ("journalctl -u worker-service -n -5", r"whole number"),
        ("journalctl -u worker-service -g ''", r"empty pattern"),
        ("docker run --privileged -v /:/host alpine", r"only `docker logs"),
        ("docker exec worker-container sh", r"only `docker logs"),
        ("docker", r"only `docker logs"),
        ("docker logs", r"expected one CONTAINER"),
        ("docker logs a b", r"expected one CONTAINER"),
        ("docker logs --details worker-container", r"option --details"),
        ("docker -H tcp://evil logs worker-container", r"only `docker logs"),
        ("docker logs --since 'x y' worker-container", r"not a time"),
        ("docker logs --tail -1 worker-container", r"whole number"),
    ],
)
def test_journal_and_docker_refusals(command: str, match: str) -> None:
    refused(command, match)


def test_journal_unit_text_is_kept_whole_for_the_policy_to_judge() -> None:
    """`-u 'x + _SYSTEMD_UNIT=sshd.service'` is one unit name; runner refuses it (REFUSED)."""
    req = grammar.parse("journalctl -u 'x + _SYSTEMD_UNIT=sshd.service'")
    assert req == Journal("x + _SYSTEMD_UNIT=sshd.service")


def test_docker_container_after_double_dash_is_a_name() -> None:
    assert grammar.parse("docker logs -- -f") == Docker("-f")  # runner refuses: not allowed


@pytest.mark.parametrize(
    "command",
    ["\ud800", f"tail -n 1 {LOG}\udfff", f"grep '\ud83d' {LOG}", "\udcff" * 5000, "\ud800" * 2000],
    ids=["lone", "in-path", "in-pattern", "escapes-5000", "lone-2000"],
)
def test_lone_surrogates_are_a_refusal_not_a_crash(command: str) -> None:
    """A bridge REQUEST is JSON, and JSON can carry "\\ud800": not UTF-8, not encodable.

    (From SSH_ORIGINAL_COMMAND, invalid UTF-8 arrives as U+DC80..U+DCFF escapes.)
    """
    refused(command, r"not valid UTF-8|longer than 4096")


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a)\g1",
        r"(a)\g{1}",
        r"(a)\g{-1}",
        r"(?<n>a)\k<n>",
        r"(?<n>a)\k'n'",
        r"(?<n>a)\k{n}",
        r"(?P<n>a)(?P=n)",
        r"(a|(?R))",
        r"(a)(?1)",
        r"(?<n>a)(?&n)",
        r"(?P<n>a)(?P>n)",
        r"(a)(?-1)",
        r"(a)(?+1)",
    ],
)
def test_pcre_back_references_and_recursion_are_refused_for_journalctl(pattern: str) -> None:
    """journalctl -g is PCRE2: its back-references are not spelled only \\1..\\9."""
    refused(f"journalctl -u worker-service -g '{pattern}'", r"back-references")
