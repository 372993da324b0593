"""Small helpers for tests (not fixtures)."""
from __future__ import annotations

import csv
from pathlib import Path


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def group_labels(rows: list[dict]) -> tuple[list[str], list[int]]:
    """(true group per row from its folder name, predicted cluster per row)."""
    return [Path(r["path"]).parent.name for r in rows], [int(r["cluster"]) for r in rows]
