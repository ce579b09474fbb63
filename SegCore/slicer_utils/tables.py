"""Metric rows -> a table node whose columns carry titles, units and descriptions.

    rows = compare_volumes(prediction, reference, labels={1: "left atrium"})
    table_node = rows_to_table_node(rows, scene, name="Review metrics")

Rows are SegCore.metrics' dicts (`compare_label_maps` / `compare_volumes`, or `evaluate(...).rows` with group,
case and file columns). A metric column's title, unit and description come from `metrics.definitions` (the one
place a metric is described); the text columns have their own below. Slicer stores these as the table's column
properties, which its table view shows and its table storage node writes to the `.schema.csv` beside the CSV.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import vtk

from SegCore.errors import SegCoreError
from SegCore.metrics.definitions import METRICS_BY_KEY, STATUSES

# Non-metric columns: (title, unit, description).
COLUMNS: dict[str, tuple[str, str, str]] = {
    "group": ("Group", "", "the prediction folder the row belongs to"),
    "case": ("Case", "", "the case identifier"),
    "label": ("Label value", "", "the label's voxel value in the label maps"),
    "label_name": ("Segment", "", "the label's (segment's) name"),
    "status": ("Status", "", "which empty-mask rule produced the row's values: "
               + "; ".join(f"{key}: {meaning}" for key, meaning in STATUSES.items())),
    "pred_file": ("Prediction file", "", "the predicted label map"),
    "ref_file": ("Reference file", "", "the reference label map"),
}


def column_info(key: str) -> tuple[str, str, str]:
    """(title, unit, description) of a column: a metric's from METRICS_BY_KEY, a known text column's from
    COLUMNS, else (key, '', '')."""
    if key in METRICS_BY_KEY:
        metric = METRICS_BY_KEY[key]
        return metric.title, metric.unit, metric.description
    return COLUMNS.get(key, (key, "", ""))


def _column_array(key: str, values: list):
    """A vtk array for one column: int when every value is an int, double when numbers (None -> NaN), else text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, numbers.Integral) for v in present) and len(present) == len(values):
        array = vtk.vtkIntArray()
        for value in values:
            array.InsertNextValue(int(value))
    elif present and all(isinstance(v, numbers.Real) for v in present):
        array = vtk.vtkDoubleArray()
        for value in values:
            array.InsertNextValue(math.nan if value is None else float(value))
    else:
        array = vtk.vtkStringArray()
        for value in values:
            array.InsertNextValue("" if value is None else str(value))
    array.SetName(key)
    return array


def rows_to_table_node(rows: Sequence[dict], scene, *, node=None, name: str = "Metrics",
                       columns: Sequence[str] | None = None):
    """A vtkMRMLTableNode with one row per dict and one column per key, added to `scene` (or `node` cleared
    and refilled). Returns the node.

    columns: the keys to show, in order (default: every key, in first-seen order). A missing value is an empty
    cell (NaN in a number column, as the metrics write undefined values). Each column gets its title, unit
    label and description (`column_info`); the table view shows the titles as headers.
    """
    keys = list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))
    if not keys:
        raise SegCoreError("no metric columns to show", fix="compute the metrics first")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    elif name:
        node.SetName(name)
    was_modifying = node.StartModify()
    node.RemoveAllColumns()
    for key in keys:
        node.AddColumn(_column_array(key, [row.get(key) for row in rows]))
        title, unit, description = column_info(key)
        node.SetColumnTitle(key, title)
        node.SetColumnUnitLabel(key, unit)
        node.SetColumnDescription(key, description)
    if hasattr(node, "SetUseColumnTitleAsColumnHeader"):  # Slicer 5.x; older versions show the names
        node.SetUseColumnTitleAsColumnHeader(True)
    node.EndModify(was_modifying)
    return node
