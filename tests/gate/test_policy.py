"""policy.py: the worker's policy file, validated strictly; anything wrong refuses everything."""

from __future__ import annotations

import marshal
import os
import pwd
import zlib
from pathlib import Path
from typing import Any

import pytest

from logtorukun.gate import policy as pol
from logtorukun.gate.errors import Exit, GateError
from logtorukun.gate.globs import compile_glob
from logtorukun.gate.policy import Limits, load_policy, parse_policy, policy_path

# The example policy of docs/gate.md, verbatim.
DESIGN_EXAMPLE = """\
[limits]        # all optional, sane defaults
max_lines = 10000
max_bytes = 10_000_000
max_seconds = 30
follow_max_seconds = 3600
max_concurrent = 4

[audit]         # where the gate writes one JSON line per request
destination = "syslog"          # or "file", with path = "/var/log/logtorukun/gate.jsonl"

[[files]]       # every regular file under root matching a pattern is readable
root = "/var/log/worker"
patterns = ["*.log", "*.log.[0-9]", "*.log.*.gz"]

[[journal]]
unit = "worker-service"

[[docker]]
container = "worker-container"
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_policy caches parsed TOML in the user's state dir: keep it in tmp_path."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def config_error(path: str, match: str) -> GateError:
    with pytest.raises(GateError) as info:
        load_policy(path)
    exc = info.value
    assert exc.code == Exit.CONFIG == 7
    assert "\n" not in exc.reason
    assert exc.reason.startswith(f"policy {path}: ")  # names the file
    assert exc.reason.endswith("refusing every request")
    assert match in exc.reason, exc.reason
    return exc


def test_design_example_loads(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, DESIGN_EXAMPLE))
    assert p.limits == Limits(10000, 10_000_000, 30.0, 3600.0, 4, "")
    assert p.audit.destination == "syslog" and p.audit.socket == "/dev/log"
    assert [(r.root, r.patterns) for r in p.files] == [
        ("/var/log/worker", ("*.log", "*.log.[0-9]", "*.log.*.gz"))
    ]
    assert p.units == ("worker-service",) and p.containers == ("worker-container",)
    assert not p.files[0].allow_hardlinks


def test_defaults_for_an_empty_policy(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, ""))
    assert p.limits == Limits()
    assert p.limits.max_memory == 256 * 1024 * 1024
    assert p.limits.max_total_memory == 512 * 1024 * 1024
    assert (p.files, p.units, p.containers) == ((), (), ())
    assert p.audit.destination == "syslog"  # authpriv by default
    assert p.programs.docker[:2] == ("/usr/bin/sudo", "-n")  # never the docker group


def test_missing_file(tmp_path: Path) -> None:
    config_error(str(tmp_path / "nope.toml"), "file not found")


def test_a_directory_is_not_a_policy(tmp_path: Path) -> None:
    config_error(str(tmp_path), "Is a directory")


def test_unreadable_for_the_gate_user(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    os.chmod(path, 0o600)
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                load_policy(path)
            except GateError as exc:
                code = 0 if "cannot be read by this user" in exc.reason else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[limits\n", "Expected ']'"),
        ("max_lines = 5\n", "unknown key .max_lines"),
        ("[limits]\nmax_line = 5\n", "unknown key limits.max_line"),
        ("[limits]\nmax_lines = '5'\n", "limits.max_lines must be int"),
        ("[limits]\nmax_lines = true\n", "limits.max_lines must be int"),
        ("[limits]\nmax_lines = 5.5\n", "limits.max_lines must be int"),
        ("[limits]\nmax_lines = 0\n", "limits.max_lines must be positive"),
        ("[limits]\nmax_bytes = -1\n", "limits.max_bytes must be positive"),
        ("[limits]\nmax_seconds = 0\n", "limits.max_seconds must be positive"),
        ("[limits]\nmax_concurrent = 0\n", "limits.max_concurrent must be positive"),
        ("[limits]\nmax_memory = '512M'\n", "limits.max_memory must be int"),
        ("[limits]\nmax_memory = 0\n", "limits.max_memory must be positive"),
        ("[limits]\nmax_memory = 512\n", "limits.max_memory is in bytes and must be at least"),
        ("[limits]\nmax_total_memory = 1.5\n", "limits.max_total_memory must be int"),
        (
            "[limits]\nmax_concurrent = 17\n",
            "limits.max_total_memory is in bytes and must be at least max_concurrent x 32 MiB"
            " (570425344)",
        ),
        (
            "[limits]\nmax_concurrent = 2\nmax_total_memory = 67108863\n",
            "limits.max_total_memory is in bytes and must be at least",
        ),
        ("[programs]\njournalctl = []\n", "programs.journalctl must be a path, or [PATH"),
        ("[programs]\njournalctl = ['/bin/j', 'x']\n", "programs.journalctl must be a path"),
        ("[programs]\njournalctl = ['/bin/j', 5]\n", "programs.journalctl must be a path"),
        ("[limits]\nmax_seconds = nan\n", "limits.max_seconds must be"),
        ("[limits]\nmax_seconds = inf\n", "limits.max_seconds must be"),
        ("[limits]\nfollow_max_seconds = inf\n", "limits.follow_max_seconds must be"),
        ("[limits]\nfollow_max_seconds = nan\n", "limits.follow_max_seconds must be"),
        ("limits = 5\n", "[limits] must be a table"),
        ('[audit]\ndestination = "stdout"\n', 'audit.destination must be "syslog" or "file"'),
        ('[audit]\ndestination = "file"\n', "needs an absolute audit.path"),
        ('[audit]\ndestination = "file"\npath = "gate.jsonl"\n', "needs an absolute audit.path"),
        ('[audit]\nfacility = "user"\n', "unknown key audit.facility"),
        ('[programs]\ngrep = "grep"\n', "'grep' must be an absolute path"),
        ('[programs]\ndocker = ["sudo", "docker"]\n', "'sudo' must be an absolute path"),
        ('[programs]\nsh = "/bin/sh"\n', "unknown key programs.sh"),
        ('files = "/var/log"\n', "write file rules as [[files]] tables"),
        ('[[files]]\nroot = "var/log"\n', "root must be an absolute path"),
        ('[[files]]\nroot = "/var/log/../etc"\n', "root must be an absolute path without . or .."),
        ('[[files]]\nroot = "/var/log/."\n', "without . or .."),
        ('[[files]]\nroot = "/var/log"\npatterns = []\n', "patterns must be non-empty"),
        ('[[files]]\nroot = "/var/log"\npatterns = [""]\n', "patterns must be non-empty"),
        ('[[files]]\nroot = "/var/log"\npatterns = ["../*.log"]\n', "without . or .."),
        ('[[files]]\nroot = "/var/log"\npatterns = ["a/../*"]\n', "without . or .."),
        ('[[files]]\nroot = "/var/log"\npatterns = ["/etc/*"]\n', "drop the leading /"),
        ('[[files]]\nroot = "/var/log"\npatterns = [1]\n', "patterns must be non-empty"),
        ('[[files]]\nroot = "/var/log"\nallow_hardlinks = "yes"\n', "allow_hardlinks must be bool"),
        ('[[files]]\nroot = "/var/log"\nfollow_symlinks = true\n', "unknown key files[0].follow"),
        ('[[journal]]\nunit = "x + _SYSTEMD_UNIT=sshd.service"\n', "is not a valid name"),
        ('[[journal]]\nunit = "-x"\n', "is not a valid name"),
        ('[[journal]]\nunit = "a b"\n', "is not a valid name"),
        ('[[journal]]\nunit = "_SYSTEMD_UNIT=sshd.service"\n', "is not a valid name"),
        ('[[journal]]\nunit = ""\n', "is not a valid name"),
        ('[[docker]]\ncontainer = "-H"\n', "is not a valid name"),
        ('[[docker]]\ncontainer = "a/b"\n', "is not a valid name"),
        ('[[docker]]\nname = "x"\n', "unknown key docker[0].name"),
        ('journal = "x"\n', "write [[journal]] tables"),
        (b"\xff\xfe".decode("latin-1"), "policy"),
    ],
)
def test_invalid_policies_name_the_file_and_the_problem(
    tmp_path: Path, text: str, match: str
) -> None:
    config_error(write(tmp_path, text), match)


def test_invalid_utf8(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_bytes(b'[audit]\ndestination = "\xff"\n')
    config_error(str(p), "codec can't decode")


def test_policy_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGTORUKUN_POLICY", raising=False)
    assert policy_path(None) == "/etc/logtorukun/policy.toml"
    monkeypatch.setenv("LOGTORUKUN_POLICY", "/env/policy.toml")
    assert policy_path(None) == "/env/policy.toml"
    assert policy_path("/arg/policy.toml") == "/arg/policy.toml"
    monkeypatch.setenv("LOGTORUKUN_POLICY", "")
    assert policy_path(None) == "/etc/logtorukun/policy.toml"


# ---------------------------------------------------------------- which paths a rule admits


def _policy(text: str) -> pol.Policy:
    import tomllib

    return parse_policy(tomllib.loads(text), "/p.toml")


def test_sibling_prefix_directory_is_not_under_the_root() -> None:
    p = _policy('[[files]]\nroot = "/var/log/app"\npatterns = ["*.log"]\n')
    rule, parts = p.file_rule("/var/log/app/x.log")
    assert (rule.root, parts) == ("/var/log/app", ["x.log"])
    outside = [
        "/var/log/app-secrets/x.log",
        "/var/log/appx.log",
        "/var/log/app.log",
        "/var/log/app",
        "/var/log/app/",
        "/var/log/ap/x.log",
        "/var/log/x.log",
    ]
    for path in outside:
        with pytest.raises(GateError) as info:
            p.file_rule(path)
        assert info.value.code == Exit.REFUSED
        assert info.value.reason == f"{path} is not allowed by the policy"


def test_root_with_a_trailing_slash_is_the_same_root() -> None:
    p = _policy('[[files]]\nroot = "/var/log/app/"\npatterns = ["*.log"]\n')
    assert p.files[0].root == "/var/log/app"
    assert p.file_rule("/var/log/app/x.log")[1] == ["x.log"]
    with pytest.raises(GateError):
        p.file_rule("/var/log/app-secrets/x.log")


def test_patterns_decide_and_never_cross_directories() -> None:
    globs = '["*.log", "*.log.[0-9]", "*.log.*.gz", "sub/**/*.txt"]'
    p = _policy(f'[[files]]\nroot = "/r"\npatterns = {globs}\n')
    ok = [
        "/r/app.log",
        "/r/.hidden.log",
        "/r/app.log.1",
        "/r/app.log.2.gz",
        "/r/sub/a.txt",
        "/r/sub/x/y/a.txt",
    ]
    bad = [
        "/r/app.txt",
        "/r/d/app.log",
        "/r/app.log.10",
        "/r/app.log.x",
        "/r/app.log.gz",
        "/r/notes.txt",
        "/r/a.txt",
        "/r/sub/a.log",
        "/r/app.logx",
    ]
    for path in ok:
        assert p.file_rule(path)[0].root == "/r", path
    for path in bad:
        with pytest.raises(GateError):
            p.file_rule(path)


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("*.log", ["a.log", ".log"], ["a/b.log", "a.log/"]),
        ("?.log", ["a.log"], ["/.log", "ab.log"]),
        ("[!x].log", ["a.log"], ["x.log", "/.log"]),
        ("[/].log", [], ["/.log"]),
        ("a[^]b", ["a^b"], ["ab", "a]b"]),
        ("**/*.log", ["a.log", "a/b/c.log"], ["a/b/c.txt"]),
        ("sub/**", ["sub/a.log", "sub/a/b.log"], ["a.log", "subx/a.log"]),
        ("**.log", ["a.log", "a/b.log"], ["a.txt"]),
        ("a.log[", ["a.log["], ["a.log"]),
    ],
)
def test_glob(glob: str, yes: list[str], no: list[str]) -> None:
    g = compile_glob(glob)
    for s in yes:
        assert g.match(s), (glob, s)
    for s in no:
        assert not g.match(s), (glob, s)


# ---------------------------------------------------------------- the parse cache


def _cache(tmp_path: Path) -> Path:
    return tmp_path / f"logtorukun-gate-{os.getuid()}" / "policy.cache"


def test_changed_policy_is_reparsed(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_lines = 5\n")
    assert load_policy(path).limits.max_lines == 5
    assert _cache(tmp_path).exists()
    assert load_policy(path).limits.max_lines == 5  # from the cache
    Path(path).write_text("[limits]\nmax_lines = 6\n")  # same size, other bytes
    assert load_policy(path).limits.max_lines == 6
    Path(path).write_text("[limits]\nmax_lines = 0\n")
    config_error(path, "limits.max_lines must be positive")  # validated every time


def _forge(tmp_path: Path, path: str, data: dict[str, Any]) -> Path:
    raw = Path(path).read_bytes()
    cache = _cache(tmp_path)
    cache.parent.mkdir(mode=0o700, exist_ok=True)
    cache.write_bytes(marshal.dumps(((path, len(raw), zlib.crc32(raw)), data)))
    return cache


def test_a_cache_others_could_write_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[[files]]\nroot = "/var/log/app"\n')
    evil = {"files": [{"root": "/", "patterns": ["**/*"]}]}
    cache = _forge(tmp_path, path, evil)
    cache.chmod(0o666)
    assert [r.root for r in load_policy(path).files] == ["/var/log/app"]
    cache = _forge(tmp_path, path, evil)
    cache.chmod(0o600)
    os.chown(cache, pwd.getpwnam("nobody").pw_uid, -1)
    assert [r.root for r in load_policy(path).files] == ["/var/log/app"]


def test_a_cache_through_a_symlink_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[[files]]\nroot = "/var/log/app"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    forged = _forge(tmp_path, path, {"files": [{"root": "/", "patterns": ["**/*"]}]})
    forged.rename(elsewhere / "policy.cache")
    forged.symlink_to(elsewhere / "policy.cache")
    assert [r.root for r in load_policy(path).files] == ["/var/log/app"]


def test_a_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_lines = 7\n")
    cache = _cache(tmp_path)
    cache.parent.mkdir(mode=0o700)
    for junk in (b"", b"garbage", marshal.dumps([1, 2, 3]), marshal.dumps((1, 2))):
        cache.write_bytes(junk)
        cache.chmod(0o600)
        assert load_policy(path).limits.max_lines == 7


def test_journalctl_with_fixed_arguments(tmp_path: Path) -> None:
    text = '[programs]\njournalctl = ["/usr/bin/journalctl", "--directory=/var/log/jr"]\n'
    p = load_policy(write(tmp_path, text))
    assert p.programs.journalctl == "/usr/bin/journalctl"
    assert p.programs.journalctl_args == ("--directory=/var/log/jr",)
    assert load_policy(write(tmp_path, "")).programs.journalctl_args == ()
