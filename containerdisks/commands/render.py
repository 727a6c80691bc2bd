"""The one renderer of what a command prints: a table for people, JSON for programs, on stdout.

One job: lay out rows as every command's table does — a header, then one row per line, every
column but the last padded to its widest cell, two spaces between columns, trailing spaces
cut — and write JSON with a two-space indent and a final newline. The commands choose the
columns and the JSON keys (`commands/push.py`, `verify.py`, `promote.py`, `prune.py`,
`catalog.py`); nothing here knows a command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["table_lines", "write_json", "write_table"]

Row = Sequence[str]


def table_lines(rows: Sequence[Row]) -> list[str]:
    """`rows` (the header first) as aligned lines, without newlines."""
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
    return [
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])), row[-1]]).rstrip()
        for row in rows
    ]


def write_table(rows: Sequence[Row], out: TextIO) -> None:
    for line in table_lines(rows):
        out.write(line + "\n")


def write_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")
