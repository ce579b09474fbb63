"""Cohort statistics over per-case rows: mean, std, median, IQR, min, max and how many cases each is over.

Undefined values (NaN, from the empty-mask policy) are not averaged; they are counted in `n_undefined`, so a
reader always sees how many cases a statistic is over (`n_valid`). The standard deviation is the sample one
(ddof=1); it is NaN (null) when fewer than two values are valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from SegCore.metrics.definitions import METRIC_KEYS, STATUSES

NAN = float("nan")


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """Statistics of one metric's values (NaN = undefined, counted apart)."""
    array = np.asarray(list(values), dtype=float)
    valid = array[np.isfinite(array)]
    stats: dict[str, float | int] = {"n_valid": int(valid.size), "n_undefined": int(array.size - valid.size)}
    if valid.size == 0:
        return {**{k: NAN for k in ("mean", "std", "median", "q1", "q3", "iqr", "min", "max")}, **stats}
    q1, median, q3 = np.percentile(valid, [25, 50, 75])
    return {
        "mean": float(valid.mean()),
        "std": float(valid.std(ddof=1)) if valid.size > 1 else NAN,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "min": float(valid.min()),
        "max": float(valid.max()),
        **stats,
    }


def summarise(rows: Sequence[dict], metric_keys: Sequence[str] = METRIC_KEYS) -> list[dict]:
    """One summary row per (group, label, metric), in first-seen group and label order.

    rows: per-case rows with "label", "label_name", "status", the metric keys and optionally "group".
    Each summary row: group, label, label_name, metric, mean, std, median, q1, q3, iqr, min, max, n_valid,
    n_undefined, n_cases, and one `n_<status>` count per status.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("group", ""), row["label"]), []).append(row)
    summary = []
    for (group, label), members in groups.items():
        counts = {f"n_{status}": sum(r["status"] == status for r in members) for status in STATUSES}
        for key in metric_keys:
            summary.append({"group": group, "label": label, "label_name": members[0]["label_name"], "metric": key,
                            **describe(r[key] for r in members), "n_cases": len(members), **counts})
    return summary
