"""Evaluation plots as PNG: bars for a single case, box plots with the cases as points for a cohort, and
per-case bars.

`write_plots` chooses: when every group has one case, `metrics.png` shows one bar per label and group with its
value written on it (a box of one point is a flat line); otherwise `boxplots.png` shows each label's spread
(box from two cases on, every case as a point) and `cases_<metric>.png` one bar per case. A metric panel
with no defined value (NaN everywhere) is left out, so no panel is empty. Axes name the metric and its unit.

Figures are built with matplotlib's object API (no pyplot state), so the same functions work headless, in the
CLI and inside Slicer. The layout is computed here from fixed margins instead of matplotlib's constrained or
tight layout, which measure every text several times and made plotting most of an evaluation's run time.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from SegCore.atomic import save_figure
from SegCore.metrics.definitions import METRICS_BY_KEY, STATUS_OK

PLOT_METRICS = ("dice", "surface_dice", "hd95_mm", "assd_mm", "abs_volume_diff_ml", "rel_volume_diff_pct")
CASE_METRICS = ("dice", "hd95_mm")
_SIGNED = ("volume_diff_ml", "rel_volume_diff_pct")
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_DPI = 100
_FONT = 8
# Figure margins in inches: room for tick labels (rotated label names below), axis labels and the legend.
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.65, 0.15, 0.45, 0.75
_PANEL_W, _PANEL_H, _GAP_W, _GAP_H = 2.4, 1.9, 0.65, 1.0


def axis_label(key: str) -> str:
    """'HD95 (mm)', 'Dice': the metric's title and unit, for an axis."""
    info = METRICS_BY_KEY[key]
    return f"{info.title} ({info.unit})" if info.unit else info.title


def _ordered(rows: Sequence[dict], key: str) -> list:
    return list(dict.fromkeys(row[key] for row in rows))


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, float | int) and math.isfinite(v)]


def _figure(columns: int, lines: int, *, panel_w: float = _PANEL_W, legend: bool = False):
    """A figure for a grid of panels, with the margins fixed in inches (no layout engine)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = _TOP + (0.25 if legend else 0.0)
    width = _LEFT + _RIGHT + columns * panel_w + (columns - 1) * _GAP_W
    height = _TOP + _BOTTOM + lines * _PANEL_H + (lines - 1) * _GAP_H + (top - _TOP)
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)  # Agg directly: savefig then needs no backend look-up (which imports pyplot)
    figure.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width, top=1 - top / height,
                           bottom=_BOTTOM / height, wspace=_GAP_W / panel_w, hspace=_GAP_H / _PANEL_H)
    return figure


def _legend(figure, groups: list[str]) -> None:
    if len(groups) > 1:
        from matplotlib.patches import Patch

        handles = [Patch(color=_COLOURS[g % len(_COLOURS)], label=group) for g, group in enumerate(groups)]
        figure.legend(handles=handles, loc="upper center", ncols=min(len(groups), 6), fontsize=_FONT,
                      frameon=False)


def _style(axes, key: str, labels: list[str], xlabel: str, values: list[float]) -> None:
    """Ticks, axis labels with units, and a y range that shows 0 and leaves room above the bars for their text.

    values: the finite values drawn. Fractions span 0-1; distances and absolute differences start at 0.
    """
    axes.set_xticks(range(len(labels)), [str(label) for label in labels], rotation=30 if len(labels) > 2 else 0,
                    ha="right" if len(labels) > 2 else "center", fontsize=_FONT - 1)
    axes.set_xlim(-0.6, len(labels) - 0.4)
    axes.set_ylabel(axis_label(key), fontsize=_FONT)
    axes.set_xlabel(xlabel, fontsize=_FONT)
    axes.tick_params(axis="y", labelsize=_FONT - 1)
    axes.locator_params(axis="y", nbins=4)  # a few round ticks are enough, and each tick is drawn text
    axes.grid(axis="y", alpha=0.3)
    low, high = min([0.0, *values]), max([0.0, *values])
    if METRICS_BY_KEY[key].unit == "":
        low, high = 0.0, 1.0
    pad = 0.22 * ((high - low) or 1.0)
    axes.set_ylim(low - (pad if low < 0 else 0.0), high + pad)


def _panels(rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    """The metrics with at least one defined value: a panel each."""
    return [key for key in metrics if _finite(r[key] for r in rows)]


def _offset(g: int, groups: int, width: float) -> float:
    return (g - (groups - 1) / 2) * width


def _panel_grid(rows: Sequence[dict], metrics: Sequence[str]):
    """(figure, [(metric, axes)], groups, labels, bar width): up to 3 panels a row, one per metric with a value;
    None when no metric has one."""
    groups, labels = _ordered(rows, "group"), _ordered(rows, "label_name")
    keys = _panels(rows, metrics)
    if not keys:
        return None
    columns = min(len(keys), 3)
    lines = math.ceil(len(keys) / columns)
    figure = _figure(columns, lines, legend=len(groups) > 1)
    panels = [(key, figure.add_subplot(lines, columns, index + 1)) for index, key in enumerate(keys)]
    return figure, panels, groups, labels, 0.8 / len(groups)


def bars_figure(rows: Sequence[dict], metrics: Sequence[str] = PLOT_METRICS):
    """One case per group: a panel per metric, a bar per label and group, with its value written on it (and the
    empty-mask status where it is not 'ok'). A matplotlib Figure, or None when no metric has a value."""
    layout = _panel_grid(rows, metrics)
    if layout is None:
        return None
    figure, panels, groups, labels, width = layout
    for key, axes in panels:
        for g, group in enumerate(groups):
            for lab, label in enumerate(labels):
                row = next((r for r in rows if r["group"] == group and r["label_name"] == label), None)
                value = float("nan") if row is None else float(row[key])
                x = lab + _offset(g, len(groups), width)
                shown = value if math.isfinite(value) else 0.0
                axes.bar(x, shown, width=width * 0.9, color=_COLOURS[g % len(_COLOURS)])
                text = f"{value:.3g}" if math.isfinite(value) else "n/a"
                if row is not None and row["status"] != STATUS_OK:
                    text += "\n" + row["status"].replace("_", " ")
                below = shown < 0
                axes.annotate(text, (x, shown), xytext=(0, -2 if below else 2), textcoords="offset points",
                              ha="center", va="top" if below else "bottom", fontsize=_FONT - 2)
        _style(axes, key, labels, "label", _finite(r[key] for r in rows))
    _legend(figure, groups)
    return figure


def boxes_figure(rows: Sequence[dict], metrics: Sequence[str] = PLOT_METRICS):
    """A cohort: a panel per metric; per label and group a box (from two defined values on) and every case as a
    point. Undefined values (NaN) are left out. A matplotlib Figure, or None when no metric has a value."""
    layout = _panel_grid(rows, metrics)
    if layout is None:
        return None
    figure, panels, groups, labels, width = layout
    for key, axes in panels:
        for g, group in enumerate(groups):
            colour = _COLOURS[g % len(_COLOURS)]
            for lab, label in enumerate(labels):
                values = _finite(r[key] for r in rows if r["group"] == group and r["label_name"] == label)
                x = lab + _offset(g, len(groups), width)
                if len(values) > 1:
                    boxes = axes.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True,
                                         showfliers=False, manage_ticks=False)
                    for patch in boxes["boxes"]:
                        patch.set(facecolor=colour, alpha=0.35)
                    for line in boxes["medians"]:
                        line.set(color="black")
                # The cases themselves, spread evenly across the box so that equal values stay visible.
                spread = [x + width * 0.6 * ((i + 0.5) / len(values) - 0.5) for i in range(len(values))]
                axes.scatter(spread, values, s=9, color=colour, edgecolors="black", linewidths=0.3, zorder=3)
        _style(axes, key, labels, "label", _finite(r[key] for r in rows))
    _legend(figure, groups)
    return figure


def cases_figure(rows: Sequence[dict], metric: str = "dice"):
    """Per-case bars of one metric: a panel per label, a bar colour per group; a bar that comes from an empty-mask
    rule is labelled with its status. A matplotlib Figure, or None when the metric has no value."""
    groups, labels, cases = _ordered(rows, "group"), _ordered(rows, "label_name"), _ordered(rows, "case")
    labels = [label for label in labels if _finite(r[metric] for r in rows if r["label_name"] == label)]
    if not labels:
        return None
    panel_w = min(max(4.0, 0.3 * len(cases) * len(groups)), 40.0)
    figure = _figure(1, len(labels), panel_w=panel_w, legend=len(groups) > 1)
    width = 0.8 / len(groups)
    by_key = {(r["group"], r["case"], r["label_name"]): r for r in rows}
    for lab, label in enumerate(labels):
        axes = figure.add_subplot(len(labels), 1, lab + 1)
        for g, group in enumerate(groups):
            heights, notes = [], []
            for case in cases:
                row = by_key.get((group, case, label))
                value = float("nan") if row is None else float(row[metric])
                heights.append(value if math.isfinite(value) else 0.0)
                status = "no row" if row is None else row["status"]
                notes.append("" if status == STATUS_OK and math.isfinite(value) else status.replace("_", " "))
            positions = [c + _offset(g, len(groups), width) for c in range(len(cases))]
            axes.bar(positions, heights, width=width * 0.9, color=_COLOURS[g % len(_COLOURS)])
            for x, note in zip(positions, notes, strict=True):
                if note:  # from the axis up, over the bar: inside the panel whatever the bar's height
                    axes.text(x, 0.0, " " + note, ha="center", va="bottom", fontsize=_FONT - 2, rotation=90,
                              zorder=3)
        _style(axes, metric, cases, "case", _finite(r[metric] for r in rows if r["label_name"] == label))
        axes.set_title(label, fontsize=_FONT + 1)
    _legend(figure, groups)
    return figure


def figures_for(rows: Sequence[dict]) -> dict[str, object]:
    """{file name: Figure}: the plots that suit the rows (see the module docstring); none for no rows."""
    if not rows:
        return {}
    if max(Counter((r["group"], r["label"]) for r in rows).values()) == 1:
        figures = {"metrics.png": bars_figure(rows)}
    else:
        figures = {"boxplots.png": boxes_figure(rows),
                   **{f"cases_{metric}.png": cases_figure(rows, metric) for metric in CASE_METRICS}}
    return {name: figure for name, figure in figures.items() if figure is not None}


def write_plots(rows: Sequence[dict], out_dir: str | os.PathLike) -> list[str]:
    """Write the plots that suit the rows into `out_dir` as PNG, atomically each; returns their file names."""
    figures = figures_for(rows)
    for name, figure in figures.items():
        save_figure(figure, Path(out_dir) / name, dpi=_DPI)
    return list(figures)
