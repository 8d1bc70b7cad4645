"""Writing the trail out for people and other tools: JSON lines and CSV.

JSON lines are the records exactly as hashed, so each line verifies on its own (see
`records.py`). CSV is for people and spreadsheets, not for verification: cells that a
spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or CR) are
prefixed with `'`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, Literal, TextIO

from .records import COLUMNS, AuditRecord, canonical_json

ExportFormat = Literal["jsonl", "csv"]


def export_records(fmt: ExportFormat, out: TextIO, records: Iterable[AuditRecord]) -> int:
    """Write `records` in their order; returns how many. Open CSV targets with newline=""."""
    if fmt == "jsonl":
        n = 0
        for record in records:
            out.write(record.to_json() + "\n")
            n += 1
        return n
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        n = 0
        for record in records:
            writer.writerow(_csv_row(record))
            n += 1
        return n
    raise ValueError(f"export format {fmt!r}: use jsonl or csv")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        value = canonical_json(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # a spreadsheet would run it as a formula
    return value


def _csv_row(record: AuditRecord) -> list[Any]:
    d = record.as_dict()
    return [_csv_cell(d[c]) for c in COLUMNS]
