"""Reading `server.toml`: a table reader that names the file, the line and the key of
every mistake, and paths relative to the config file. Used by config.py and
config_siem.py alike (its own module, so neither imports the other's internals).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import UserError


class ConfigError(UserError):
    """The config file is missing or wrong."""


class TableReader:
    """Pulls typed keys out of one TOML table and rejects the ones nobody asked for."""

    def __init__(self, path: Path, text: str, table: str, data: Any, index: int = 0) -> None:
        self.path, self.text, self.table, self.index = path, text, table, index
        if not isinstance(data, dict):
            self.fail("", f"[{table}] must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        header = re.escape(self.table)
        starts = [m.end() for m in re.finditer(rf"(?m)^\s*\[\[?{header}\]\]?", self.text)]
        start = starts[self.index] if self.index < len(starts) else 0
        line = self.text.count("\n", 0, start) + 1 if starts else 1
        if key:
            m = re.compile(rf"(?m)^\s*{re.escape(key)}\s*=").search(self.text, start)
            if m:
                line = self.text.count("\n", 0, m.start()) + 1
        return f"{self.path}:{line}"

    def fail(self, key: str, message: str) -> None:
        label = f"[{self.table}] {key}: " if key else ""
        raise ConfigError(f"{self.where(key)}: {label}{message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is REQUIRED:
                import difflib

                near = difflib.get_close_matches(key, [str(k) for k in self.data], n=1)
                if near:
                    self.fail(near[0], f"unknown key; did you mean {key!r}?")
                self.fail(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.fail(key, f"must be {names}, not {type(value).__name__}")
        return value

    def strings(self, key: str, default: Any = None) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if value is None:
            return ()
        if not all(isinstance(v, str) and v for v in value):
            self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def tables(self, key: str, what: str) -> list[TableReader]:
        """The array of tables `[[key]]` in this one, a reader each (so a mistake names
        its own table's line); `what` names them in the message if `key` is no array."""
        raw = self.data.get(key, [])
        if not isinstance(raw, list):
            self.fail(key, f"write {what} as [[{key}]] tables")
        return [TableReader(self.path, self.text, key, t, i) for i, t in enumerate(raw)]

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            self.fail(extra[0], "unknown key (check the spelling; see docs/configuration.md)")


REQUIRED: Any = object()


def resolve_path(config_file: Path, value: str) -> Path:
    """Relative paths in the config are relative to the config file, not the cwd."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (config_file.parent / p).resolve()
