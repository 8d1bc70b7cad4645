"""The examples in the documents are real: each is run through the code that reads it.

docs/gate.md's command lines go through the gate's parser, its policy example through
the policy loader, docs/configuration.md's server.toml through the config loader, and
every document's relative links resolve. (tests/ops/test_docs.py checks the operator
documents' CLI lines and error messages.)
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from logtorukun.config import parse_config
from logtorukun.gate import grammar, vocabulary
from logtorukun.gate.policy import parse_policy

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ALL_DOCS = sorted([*DOCS.glob("*.md"), REPO / "README.md"])


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def gate_commands() -> list[str]:
    """The quoted command of every `ssh logtorukun@worker "..."` line in docs/gate.md."""
    out = []
    for block in blocks((DOCS / "gate.md").read_text(), "sh"):
        for line in block.splitlines():
            if line.startswith("ssh logtorukun@worker "):
                out.append(shlex.split(line)[2])
    return out


def test_gate_doc_has_examples() -> None:
    assert len(gate_commands()) >= 4


@pytest.mark.parametrize("command", gate_commands())
def test_gate_doc_commands_parse(command: str) -> None:
    request = grammar.parse(command)
    assert not isinstance(request, vocabulary.Help)


def test_gate_doc_usage_lists_every_verb() -> None:
    text = (DOCS / "gate.md").read_text()
    for line in grammar.USAGE.splitlines():
        assert line in text, f"docs/gate.md does not show the usage line {line!r}"


def test_gate_doc_policy_example_loads() -> None:
    examples = [b for b in blocks((DOCS / "gate.md").read_text(), "toml") if "[[files]]" in b]
    assert examples
    for text in examples:
        policy = parse_policy(tomllib.loads(text), "docs/gate.md")
        assert policy.files and policy.units == ("worker-service",)
        assert policy.containers == ("worker-container",)


def test_configuration_doc_example_loads() -> None:
    examples = [b for b in blocks((DOCS / "configuration.md").read_text(), "toml")]
    assert examples
    for text in examples:
        config = parse_config(tomllib.loads(text), Path("/etc/logtorukun/server.toml"), text)
        assert config.host("web1") is not None and "ops" in config.roles


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        if target.startswith(("http", "mailto")):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is missing"


def cli_lines() -> list[tuple[str, str]]:
    """Every `logtorukun ...` line in a sh/console block of every document, except
    synopsis lines (`[optional]`, `a|b`), which show a form rather than a command."""
    found = []
    for doc in ALL_DOCS:
        for _lang, block in re.findall(r"```(sh|console|bash)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\s*[$#] ", "", line.strip())
                line = re.sub(r"\s+#.*$", "", line)
                if line.startswith("logtorukun ") and not re.search(r"[\[|]", line):
                    found.append((doc.name, line))
    return found


def test_docs_show_cli_commands() -> None:
    assert len(cli_lines()) >= 30


@pytest.mark.parametrize(("doc", "line"), cli_lines())
def test_documented_cli_commands_parse(doc: str, line: str) -> None:
    from logtorukun.cli import build_parser

    try:
        args = build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{line}` does not parse (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{doc}: `{line}` runs nothing"
