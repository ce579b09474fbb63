"""The Review panel's logic: metrics of one segmentation against a reference, and a cohort's evaluation folder.

    logic = ReviewLogic(slicer.mrmlScene)
    table = logic.compute(seg_node, reference_node)                  # one row per segment: Dice, HD95, ...
    logic.show(table)                                                 # a layout with the table
    table, chart = logic.load_evaluation("eval/", metric="hd95_mm")   # `segcore evaluate --out eval/` -> box plot
    logic.export_csv(logic.rows, "review.csv")

The reference is a segmentation node or a label map volume node; its grid is where the metrics are computed
(a prediction on another grid is sampled onto it, nearest neighbour). Segments are paired by name, so each is
compared as its own mask and segments that overlap each other are no problem. The metrics are SegCore.metrics'
(compare_masks), with the same definitions and empty-mask policy as `segcore evaluate`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.tables import rows_to_table_node

# The columns the per-case table shows first (the list); the remaining metrics follow.
REVIEW_COLUMNS = ("label_name", "dice", "iou", "precision", "recall", "hd_mm", "hd95_mm", "assd_mm", "surface_dice",
                  "volume_pred_ml", "volume_ref_ml", "status")


def _reference_masks(reference_node, labels: Mapping[str, int] | Sequence[str] | None):
    """(grid, [(name, value, mask getter)]) of the reference: segments of a segmentation node, or the values of
    a label map volume node (named by `labels`, else 'label N')."""
    from SegCore.slicer_utils.segmentations import segment_mask, segmentation_grid, segments_of_node
    from SegCore.slicer_utils.volumes import volume_from_node

    wanted = None if labels is None else dict(labels) if isinstance(labels, Mapping) else {n: None for n in labels}
    if reference_node.IsA("vtkMRMLSegmentationNode"):
        grid = segmentation_grid(reference_node)
        segments = segments_of_node(reference_node)
        by_name = {s.name: s for s in segments}
        names = list(wanted) if wanted is not None else [s.name for s in segments]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SegCoreError(f"the reference {reference_node.GetName()!r} has no segment {', '.join(missing)}",
                               fix=f"choose from {', '.join(by_name) or 'none'}")
        return grid, [(name, (wanted or {}).get(name) or by_name[name].label_value,
                       lambda s=by_name[name]: segment_mask(reference_node, s.extra["ID"], grid)) for name in names]
    volume = volume_from_node(reference_node)
    if volume.array.ndim != 3:
        raise SegCoreError(f"the reference {reference_node.GetName()!r} has channels; choose a label map")
    if wanted is None:
        values = [int(v) for v in np.unique(volume.array) if v != 0]
        wanted = {f"label {v}": v for v in values}
    if any(value is None for value in wanted.values()):
        raise SegCoreError("a label map reference needs the label values: pass labels={name: value}")
    return volume.grid, [(name, int(value), lambda v=int(value): volume.array == v) for name, value in wanted.items()]


def _prediction_mask(node, name: str, grid):
    from SegCore.slicer_utils.segmentations import segment_mask, segments_of_node

    for segment in segments_of_node(node):
        if segment.name == name:
            return segment_mask(node, segment.extra["ID"], grid)
    return None


class ReviewLogic:
    """Per-case metrics and cohort results of `scene`; `rows` keeps the last computed or loaded rows."""

    def __init__(self, scene):
        self.scene = scene
        self.rows: list[dict] = []

    def compute(self, segmentation_node, reference_node, labels: Mapping[str, int] | Sequence[str] | None = None, *,
                table_node=None, tolerance_mm: float | None = None, name: str = "Review metrics"):
        """One table row per reference segment: every SegCore metric of the segment of the same name in
        `segmentation_node` (none: an empty mask) against it, on the reference's grid.

        labels: the names to compare ({name: label value} for a label map reference); None: all of the
        reference's. tolerance_mm: surface Dice tolerance (default DEFAULT_TOLERANCE_MM). Returns the table
        node (refilled when given); its columns carry titles, units and descriptions.
        """
        from SegCore.metrics import compare_masks
        from SegCore.metrics.definitions import DEFAULT_TOLERANCE_MM

        if segmentation_node is None or reference_node is None:
            raise SegCoreError("choose a segmentation and a reference")
        grid, references = _reference_masks(reference_node, labels)
        tolerance = DEFAULT_TOLERANCE_MM if tolerance_mm is None else tolerance_mm
        rows = []
        for label_name, value, reference_mask in references:
            reference = reference_mask()
            prediction = _prediction_mask(segmentation_node, label_name, grid)
            if prediction is None:
                prediction = np.zeros(grid.shape_zyx, dtype=bool)
            scores = compare_masks(prediction, reference, grid.spacing_xyz_mm, direction=grid.direction_lps,
                                   tolerance_mm=tolerance)
            rows.append({"label": int(value), "label_name": label_name, **scores})
        if not rows:
            raise SegCoreError(f"the reference {reference_node.GetName()!r} holds no segment to compare")
        self.rows = rows
        columns = [*REVIEW_COLUMNS, *(key for key in rows[0] if key not in REVIEW_COLUMNS)]
        return rows_to_table_node(rows, self.scene, node=table_node, name=name, columns=columns)

    def load_evaluation(self, folder, *, metric: str = "dice", table_node=None, chart_node=None):
        """A `segcore evaluate --out` folder (or a `segcore run` report's) as a table node of its per-case rows
        and a plot chart node with one box per group and label of `metric` over the cases. Returns (table,
        chart); the box plot's points are in a second table node, the chart's series' table."""
        from SegCore.metrics.definitions import METRICS_BY_KEY
        from SegCore.slicer_utils.plots import box_plot_chart

        folder = Path(folder)
        path = folder / "metrics.json"
        if not path.is_file():
            raise SegCoreError("not an evaluation folder: it has no metrics.json", path=folder,
                               fix="choose the folder `segcore evaluate --out` wrote")
        try:
            rows = list(json.loads(path.read_text(encoding="utf-8"))["rows"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SegCoreError(f"metrics.json is not readable: {error}", path=path,
                               fix="write the report again with segcore evaluate") from None
        if metric not in METRICS_BY_KEY:
            raise SegCoreError(f"unknown metric {metric!r}", fix=f"use one of {', '.join(METRICS_BY_KEY)}")
        if not rows:
            raise SegCoreError("the evaluation holds no cases", path=path)
        groups = list(dict.fromkeys(row["group"] for row in rows))
        boxes: dict[str, list] = {}
        for row in rows:
            box = f"{row['group']} / {row['label_name']}" if len(groups) > 1 else str(row["label_name"])
            boxes.setdefault(box, []).append(row.get(metric))
        self.rows = rows
        table = rows_to_table_node(rows, self.scene, node=table_node, name=f"{folder.name} metrics")
        _, chart = box_plot_chart(boxes, self.scene, metric=metric, chart_node=chart_node, name=folder.name)
        return table, chart

    @staticmethod
    def export_csv(rows, path: str | os.PathLike) -> Path:
        """Write rows (dicts, or a table node's rows) as CSV, atomically (SegCore.metrics.tables.rows_to_csv:
        full precision, NaN as an empty cell). Returns the path."""
        from SegCore.metrics.tables import rows_to_csv

        if hasattr(rows, "GetTable"):
            rows = table_node_rows(rows)
        if not rows:
            raise SegCoreError("nothing to export", fix="compute the metrics first")
        return rows_to_csv(list(rows), path)

    def show(self, table_node=None, chart_node=None) -> None:
        """Show the table (and chart) in a layout that has a table view (and a plot view), through the scene's
        layout, table view and plot view nodes (MRML only; in a scene without views nothing happens)."""
        show_in_layout(self.scene, table_node, chart_node)


def table_node_rows(table_node) -> list[dict]:
    """A table node's rows as dicts {column name: value}: numbers as float/int, text as str."""
    table = table_node.GetTable()
    columns = [table.GetColumn(i) for i in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for column in columns:
            value = column.GetValue(r)
            row[column.GetName()] = value if isinstance(value, str | int | float) else str(value)
        rows.append(row)
    return rows


def show_in_layout(scene, table_node=None, chart_node=None) -> None:
    """Switch the scene's layout node to four-up + table (+ plot with a chart), and point the table and plot
    view nodes at the nodes. In Slicer the views follow their view nodes."""
    import slicer

    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        arrangement = (slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView if chart_node is not None else
                       slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        layout.SetViewArrangement(arrangement)
    for view_class, node, setter in (("vtkMRMLTableViewNode", table_node, "SetTableNodeID"),
                                     ("vtkMRMLPlotViewNode", chart_node, "SetPlotChartNodeID")):
        if node is None:
            continue
        views = scene.GetNodesByClass(view_class)
        for index in range(views.GetNumberOfItems()):
            getattr(views.GetItemAsObject(index), setter)(node.GetID())
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if selection is not None:
        if table_node is not None:
            selection.SetActiveTableID(table_node.GetID())
        if chart_node is not None:
            selection.SetActivePlotChartID(chart_node.GetID())
