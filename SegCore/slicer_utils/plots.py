"""Plot chart nodes: a training run's curves, and box plots of a metric over the cases of a cohort.

    table, chart = curves_chart(run.read_history(), scene)                 # loss, val_loss, dice_mean per epoch
    table, chart = box_plot_chart({"unet / left atrium": [0.81, 0.77, 0.9]}, scene, metric="dice")

Slicer's plot series are lines, bars or scatters, all reading columns of a table node; it has no box plot. A box
is therefore drawn from lines: the box itself (first to third quartile, a closed outline of 5 points), the
median, and one whisker from the minimum to the maximum, with each case as a point beside it (spread
sideways so that equal values stay visible). Quartiles come from SegCore.metrics.summary.describe, as in the
evaluation's summary.csv. Every column of a table node has the same length, so a shorter series repeats its
last point, which draws nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import slicer
import vtk

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.tables import column_info, rows_to_table_node

# Columns of history.csv drawn as curves, when present (docs: run_folder.py's column convention).
CURVE_COLUMNS = ("loss", "val_loss", "dice_mean")
BOX_HALF_WIDTH = 0.3
CASE_OFFSET = 0.42  # the case points' column, beside the box
CASE_SPREAD = 0.08
PALETTE = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
           (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5))


def _chart(scene, chart_node, name: str):
    """`chart_node` emptied of its series (their nodes removed), or a new plot chart node."""
    if chart_node is None:
        return scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for index in reversed(range(chart_node.GetNumberOfPlotSeriesNodes())):
        series = chart_node.GetNthPlotSeriesNode(index)
        chart_node.RemoveNthPlotSeriesNodeID(index)
        if series is not None:
            scene.RemoveNode(series)
    return chart_node


def _series(scene, chart, table, x: str, y: str, name: str, color, *, kind: str = "line", width: int = 2):
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    if kind == "scatter":
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetMarkerSize(6)
    else:
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineWidth(width)
    series.SetColor(*color)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


def curves_chart(history: Sequence[dict], scene, *, table_node=None, chart_node=None, name: str = "Training",
                 columns: Sequence[str] = CURVE_COLUMNS):
    """A table node of the history rows (history.csv: one row per epoch) and a chart with one line per present
    column of `columns` against the epoch. Returns (table node, chart node); both refilled when given."""
    rows = [row for row in history if "epoch" in row]
    present = [c for c in columns if any(isinstance(row.get(c), int | float) for row in rows)]
    keys = ["epoch", *present]
    table = rows_to_table_node([{k: row.get(k) for k in keys} for row in rows] or [{k: None for k in keys}], scene,
                               node=table_node, name=f"{name} history")
    chart = _chart(scene, chart_node, f"{name} curves")
    chart.SetTitle(f"{name}: loss and validation Dice per epoch")
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("value")
    chart.SetLegendVisibility(True)
    for index, column in enumerate(present):
        _series(scene, chart, table, "epoch", column, column, PALETTE[index % len(PALETTE)])
    return table, chart


def _padded(values: Sequence[float], length: int) -> list[float]:
    values = [float(v) for v in values]
    return values + [values[-1]] * (length - len(values))


def box_plot_chart(boxes: Mapping[str, Sequence[float]], scene, *, metric: str = "dice", table_node=None,
                   chart_node=None, name: str = "Cohort"):
    """A box plot of `metric`: one box per entry {box name: the cases' values} (NaN values, undefined by the
    empty-mask policy, are left out and counted in the table), at x = 1, 2, ... Returns (table node of the
    drawn points, chart node); both refilled when given."""
    from SegCore.metrics.summary import describe

    title, unit, _ = column_info(metric)
    drawn = []
    for position, (box, values) in enumerate(boxes.items(), start=1):
        stats = describe(values)
        valid = [float(v) for v in values if v is not None and np.isfinite(float(v))]
        if valid:
            drawn.append((position, box, stats, valid))
    if not drawn:
        raise SegCoreError(f"no case has a defined {title} to plot", fix="choose another metric")
    length = max(5, *(len(valid) for *_, valid in drawn))
    columns: dict[str, list[float]] = {}
    for position, _box, stats, valid in drawn:
        left, right = position - BOX_HALF_WIDTH, position + BOX_HALF_WIDTH
        q1, q3 = stats["q1"], stats["q3"]
        columns[f"box{position}_x"] = _padded([left, right, right, left, left], length)
        columns[f"box{position}_y"] = _padded([q1, q1, q3, q3, q1], length)
        columns[f"median{position}_x"] = _padded([left, right], length)
        columns[f"median{position}_y"] = _padded([stats["median"]] * 2, length)
        columns[f"whisker{position}_x"] = _padded([position, position], length)
        columns[f"whisker{position}_y"] = _padded([stats["min"], stats["max"]], length)
        spread = np.linspace(-CASE_SPREAD, CASE_SPREAD, len(valid)) if len(valid) > 1 else np.zeros(1)
        columns[f"cases{position}_x"] = _padded(position + CASE_OFFSET + spread, length)
        columns[f"cases{position}_y"] = _padded(valid, length)
    table = table_node or scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} {metric} box plot")
    was_modifying = table.StartModify()
    table.RemoveAllColumns()
    for key, values in columns.items():
        array = vtk.vtkDoubleArray()
        array.SetName(key)
        for value in values:
            array.InsertNextValue(value)
        table.AddColumn(array)
    table.EndModify(was_modifying)
    chart = _chart(scene, chart_node, f"{name} {metric}")
    axis = f"{title} ({unit})" if unit else title
    chart.SetTitle(f"{name}: {axis} per case")
    chart.SetYAxisTitle(axis)
    chart.SetXAxisTitle("   ".join(f"{position}: {box} (n={len(valid)})" for position, box, _, valid in drawn))
    chart.SetLegendVisibility(False)  # four series per box: the x-axis title names the boxes instead
    for position, box, _stats, _valid in drawn:
        color = PALETTE[(position - 1) % len(PALETTE)]
        for part, kind, width in (("whisker", "line", 1), ("box", "line", 2), ("median", "line", 3),
                                  ("cases", "scatter", 0)):
            _series(scene, chart, table, f"{part}{position}_x", f"{part}{position}_y", f"{box} {part}", color,
                    kind=kind, width=width)
    return table, chart
