"""Fixtures of the audit tests."""

from __future__ import annotations

import pytest

from logtorukun import cli


@pytest.fixture
def only_audit_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """`logtorukun audit ...` alone: other parts' subcommands are not under test, and
    no LOGTORUKUN_CONFIG of the machine's is read."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("logtorukun.cli.audit_trail",))
    monkeypatch.delenv("LOGTORUKUN_CONFIG", raising=False)
