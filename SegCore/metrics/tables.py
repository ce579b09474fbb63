"""Evaluation tables on disk: per-case CSV, cohort-summary CSV and one JSON with everything.

CSV: one header row, floats with full precision (shortest round-trip repr), undefined values (NaN) as empty
cells. JSON: NaN as null; it also records the settings, the metric definitions and the status meanings, so
the file explains itself.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from SegCore.atomic import atomic_file
from SegCore.metrics.definitions import METRICS, STATUSES


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def rows_to_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write dict rows (same keys, first row's order) as CSV, atomically. Returns the path."""
    path = Path(path)
    columns = list(rows[0]) if rows else []
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c, "")) for c in columns])
    return path


def evaluation_to_json(evaluation, path: str | os.PathLike) -> Path:
    """Write an `Evaluation` (settings, notes, metric definitions, statuses, rows, summary) as JSON, atomically."""
    path = Path(path)
    document = {
        "settings": evaluation.settings,
        "notes": evaluation.notes,
        "metric_definitions": {m.key: {"title": m.title, "unit": m.unit, "higher_is_better": m.higher_is_better,
                                       "definition": m.description} for m in METRICS},
        "statuses": STATUSES,
        "rows": evaluation.rows,
        "summary": evaluation.summary,
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(document), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


# Columns that stay text when read back (a case named '007' is not the number 7).
TEXT_COLUMNS = frozenset({"group", "case", "label_name", "status", "pred_file", "ref_file", "metric"})


def read_rows_csv(path: str | os.PathLike) -> list[dict]:
    """Read a CSV written by `rows_to_csv` back: numbers as int/float, empty number cells as NaN."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            rows.append({key: value if key in TEXT_COLUMNS else _parse(value) for key, value in raw.items()})
    return rows


def _parse(text: str):
    if text == "":
        return float("nan")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
