"""An account's statement: every change to its lots, with the running balance, as a table,
CSV or JSON (``imagine-bot statement``; chat shows the same rows)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from bot import messages
from ledger import StatementLine

COLUMNS = (
    "time",
    "kind",
    "lot",
    "available_change",
    "held_change",
    "generation",
    "model",
    "available",
    "held",
    "owed",
)


def rows(lines: Sequence[StatementLine]) -> list[dict[str, Any]]:
    """Each line as plain values under ``COLUMNS``."""
    return [
        {
            "time": line.at.isoformat(timespec="seconds"),
            "kind": str(line.kind),
            "lot": "owed" if line.lot_id is None else f"{line.lot_id} {line.lot_kind}",
            "available_change": line.available_delta,
            "held_change": line.held_delta,
            "generation": line.generation_id or "",
            "model": line.model_id or "",
            "available": line.available_after,
            "held": line.held_after,
            "owed": line.owed_after,
        }
        for line in lines
    ]


def as_csv(lines: Sequence[StatementLine]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(lines))
    return buffer.getvalue()


def as_json(lines: Sequence[StatementLine]) -> str:
    return json.dumps(rows(lines), indent=2)


def as_table(lines: Sequence[StatementLine]) -> str:
    """A table for people: without the ``owed`` column when the account never owed anything."""
    if not lines:
        return messages.NO_STATEMENT
    columns = COLUMNS
    if not any(line.owed_after or line.owed_delta for line in lines):
        columns = tuple(name for name in COLUMNS if name != "owed")
    table = [[str(row[name]) for name in columns] for row in rows(lines)]
    widths = [max(len(name), *(len(row[i]) for row in table)) for i, name in enumerate(columns)]
    shown = [columns, *table]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in shown
    )
