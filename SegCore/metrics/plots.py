"""Evaluation plots as PNG: box plots per metric and label (groups side by side), per-case bars.

Figures are built with matplotlib's object API (no pyplot state), so the same functions work headless, in the
CLI and inside Slicer. Undefined values (NaN) are left out of a box and the box's n says how many remain.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from SegCore.atomic import save_figure
from SegCore.metrics.definitions import METRICS_BY_KEY

BOX_METRICS = ("dice", "iou", "precision", "recall", "surface_dice", "hd_mm", "hd95_mm", "assd_mm",
               "abs_volume_diff_ml", "rel_volume_diff_pct")
CASE_METRICS = ("dice", "hd95_mm")
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _title(key: str) -> str:
    info = METRICS_BY_KEY[key]
    return f"{info.title} ({info.unit})" if info.unit else info.title


def _ordered(rows: Sequence[dict], key: str) -> list:
    return list(dict.fromkeys(row[key] for row in rows))


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_boxes(rows: Sequence[dict], path: str | os.PathLike, metrics: Sequence[str] = BOX_METRICS) -> Path:
    """One panel per metric; in each, a box per label, one colour per group. Writes a PNG atomically."""
    groups, labels = _ordered(rows, "group"), _ordered(rows, "label_name")
    columns = min(len(metrics), 5)
    lines = math.ceil(len(metrics) / columns)
    figure = _new_figure(3.2 * columns, 2.9 * lines + 0.4)
    width = 0.8 / len(groups)
    for index, key in enumerate(metrics):
        axes = figure.add_subplot(lines, columns, index + 1)
        for g, group in enumerate(groups):
            data, positions = [], []
            for lab, label in enumerate(labels):
                values = [r[key] for r in rows if r["group"] == group and r["label_name"] == label]
                data.append([v for v in values if math.isfinite(v)])
                positions.append(lab + (g - (len(groups) - 1) / 2) * width)
            boxes = axes.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                 showfliers=True, manage_ticks=False)
            for patch in boxes["boxes"]:
                patch.set_facecolor(_COLOURS[g % len(_COLOURS)])
                patch.set_alpha(0.6)
        axes.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, fontsize=8)
        axes.set_title(_title(key), fontsize=9)
        axes.grid(axis="y", alpha=0.3)
    if len(groups) > 1:
        from matplotlib.patches import Patch

        handles = [Patch(color=_COLOURS[g % len(_COLOURS)], alpha=0.6, label=group) for g, group in enumerate(groups)]
        figure.legend(handles=handles, loc="outside upper center", ncols=min(len(groups), 6), fontsize=8)
    return save_figure(figure, path, dpi=110, bbox_inches="tight")


def plot_cases(rows: Sequence[dict], path: str | os.PathLike, metric: str = "dice") -> Path:
    """Per-case bars of one metric: one panel per label, one bar colour per group. Writes a PNG atomically."""
    groups, labels, cases = _ordered(rows, "group"), _ordered(rows, "label_name"), _ordered(rows, "case")
    figure = _new_figure(max(6.0, 0.35 * len(cases) * max(len(groups), 1) + 2), 2.6 * len(labels) + 0.4)
    width = 0.8 / len(groups)
    value = {(r["group"], r["case"], r["label_name"]): r[metric] for r in rows}
    status = {(r["group"], r["case"], r["label_name"]): r["status"] for r in rows}
    for lab, label in enumerate(labels):
        axes = figure.add_subplot(len(labels), 1, lab + 1)
        for g, group in enumerate(groups):
            heights = [value.get((group, case, label), float("nan")) for case in cases]
            positions = [c + (g - (len(groups) - 1) / 2) * width for c in range(len(cases))]
            axes.bar(positions, [h if math.isfinite(h) else 0.0 for h in heights], width=width * 0.95,
                     color=_COLOURS[g % len(_COLOURS)], label=group)
            for x, h, case in zip(positions, heights, cases, strict=True):
                # Name the empty-mask rule behind a bar, so a 0 or a penalty is not read as a measurement.
                note = status.get((group, case, label), "no row")
                if note != "ok" or not math.isfinite(h):
                    axes.text(x, h if math.isfinite(h) else 0.0, note.replace("_", " "), ha="center",
                              va="bottom", fontsize=6, rotation=90)
        axes.set_xticks(range(len(cases)), cases, rotation=60 if len(cases) > 6 else 0, fontsize=7)
        axes.set_ylabel(_title(metric), fontsize=8)
        axes.set_title(label, fontsize=9)
        axes.grid(axis="y", alpha=0.3)
        if lab == 0 and len(groups) > 1:
            axes.legend(fontsize=7, ncols=min(len(groups), 6))
    return save_figure(figure, path, dpi=110, bbox_inches="tight")
