"""The docs cannot drift from the code (as datasette checks its docs).

- Every `logtorukun ...` command shown in a ```console block of docs/ parses with the real
  argparse parser (a renamed flag or subcommand fails here).
- Every message quoted in docs/troubleshooting.md exists in the source, and every
  `UserError` that `worker`, `doctor` and `demo` can raise is quoted there.
- Relative links between the docs point at files that exist.
- The quick start's worker setup, as printed, runs (dry run) against a throwaway root.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from logtorukun.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
OURS = ["quickstart.md", "security.md", "operations.md", "troubleshooting.md", "roadmap.md"]
SRC = REPO / "src" / "logtorukun"


def console_commands(text: str) -> list[str]:
    """`$ ` / `# ` lines of ```console blocks, with `\\` continuations joined."""
    out: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            m = re.match(r"\s*[$#] (.*)", line)
            if m:
                out.append(m.group(1).strip())
    return out


def logtorukun_commands() -> list[tuple[str, str]]:
    found = []
    for name in OURS:
        for cmd in console_commands((DOCS / name).read_text()):
            if cmd.startswith("logtorukun "):
                found.append((name, cmd))
    return found


def test_the_docs_show_commands() -> None:
    cmds = {
        c.split()[1] if not c.split()[1].startswith("-") else c.split()[3]
        for _, c in logtorukun_commands()
    }
    assert {"demo", "worker", "doctor", "hosts", "audit", "user", "token", "serve"} <= cmds


@pytest.mark.parametrize(("doc", "command"), logtorukun_commands())
def test_every_documented_command_parses(doc: str, command: str) -> None:
    argv = shlex.split(command)[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{doc}: `{command}` runs nothing"


# ---------------------------------------------------------------- messages


@functools.cache
def _literals() -> list[str]:
    """Every string literal in src/, f-string placeholders shown as `…` (adjacent
    literals are one node in the AST, so a message split over lines is whole here)."""
    out: list[str] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                out.append(
                    "".join(
                        v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "…"
                        for v in node.values
                    )
                )
    return out


def documented_messages() -> list[str]:
    text = (DOCS / "troubleshooting.md").read_text()
    return re.findall(r"`` (.+?) ``", text)


def test_troubleshooting_quotes_messages() -> None:
    assert len(documented_messages()) > 40


@pytest.mark.parametrize("message", documented_messages())
def test_every_documented_message_exists_in_the_source(message: str) -> None:
    literals = _literals()
    for fragment in message.split("…"):
        fragment = fragment.strip()
        if len(fragment) < 4:
            continue
        assert any(fragment in lit for lit in literals), (
            f"docs/troubleshooting.md quotes {fragment!r}, which no string in src/ contains"
        )


def _ops_user_errors() -> list[tuple[str, str]]:
    found = []
    for path in sorted((SRC / "ops").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "UserError"
                and node.args
            ):
                arg = node.args[0]
                parts = (
                    [arg.value]
                    if isinstance(arg, ast.Constant)
                    else [
                        v.value for v in getattr(arg, "values", []) if isinstance(v, ast.Constant)
                    ]
                )
                longest = max((str(p) for p in parts), key=len, default="")
                if len(longest.strip()) >= 8:
                    found.append((path.name, longest.strip()))
    return found


@pytest.mark.parametrize(("module", "fragment"), _ops_user_errors())
def test_every_ops_error_is_in_troubleshooting(module: str, fragment: str) -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    assert fragment in text, f"{module} can print {fragment!r}: explain it in troubleshooting.md"


# ---------------------------------------------------------------- links


@pytest.mark.parametrize("doc", OURS)
def test_relative_links_resolve(doc: str) -> None:
    text = (DOCS / doc).read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        if target in ("web.md", "client.md"):  # written by the web/client engineers
            continue
        assert (DOCS / target).exists(), f"{doc} links to {target}, which does not exist"


def test_anchors_of_links_between_our_docs_exist() -> None:
    def anchors(text: str) -> set[str]:
        heads = re.findall(r"(?m)^#+ (.+)$", text)
        return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in heads}

    for doc in OURS:
        for target, anchor in re.findall(r"\]\(([a-z-]+\.md)#([^)]+)\)", (DOCS / doc).read_text()):
            if (DOCS / target).exists():
                assert anchor in anchors((DOCS / target).read_text()), f"{doc}: {target}#{anchor}"


# ---------------------------------------------------------------- run one for real


def test_quickstart_worker_setup_runs_as_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The quick start's dry run, with its absolute paths moved below a throwaway root."""
    cmd = next(
        c
        for _, c in logtorukun_commands()
        if c.startswith("logtorukun worker setup") and "--dry-run" in c
    )
    argv = shlex.split(cmd)[1:]
    root = tmp_path / "root"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text(f"Include {root}/etc/ssh/sshd_config.d/*.conf\n")
    key = argv[argv.index("--key") + 1]
    (root / key.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key.lstrip("/"))[:-4]],
        check=True,
    )
    argv[argv.index("--key") + 1] = str(root / key.lstrip("/"))
    for i, a in enumerate(argv):
        if argv[i - 1] == "--files":
            d, _, pat = a.partition(":")
            (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
            argv[i] = f"{root}{d}:{pat}"
    assert main([*argv, "--root", str(root), "--user", "logtorukun-doc"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was changed" in out and 'restrict,from="10.0.0.2"' in out
    assert not (root / "etc/logtorukun").exists()
