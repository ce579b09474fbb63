"""Metrics: overlap and surface metrics in physical units with an explicit empty-mask policy; per-case and
cohort evaluation; tables (CSV/JSON) and plots (PNG). Definitions and formulas: docs/metrics.md.

On arrays:   compare_masks(pred, ref, spacing_xyz_mm) -> {"status", "dice", ..., "hd95_mm", ...}
             compare_label_maps(pred, ref, spacing_xyz_mm, labels={1: "liver"}) -> [row per label]
             surface_distances(pred, ref, spacing_xyz_mm) -> SurfaceDistances (the directed distance sets)
On Volumes:  compare_volumes(pred, ref, labels=..., resample=False) -> [row per label]
From disk:   evaluate(pred_dirs, ref_dir) -> Evaluation(rows, summary, settings, notes); write_report(...)

Plots import matplotlib and distances import scipy when called, so importing this package stays light.
"""

from SegCore.metrics.cases import CasePair, find_cases, pair_cases
from SegCore.metrics.compare import compare_label_maps, compare_masks, compare_volumes, image_diagonal_mm
from SegCore.metrics.definitions import (
    DEFAULT_TOLERANCE_MM,
    METRIC_KEYS,
    METRICS,
    METRICS_BY_KEY,
    STATUSES,
    MetricInfo,
)
from SegCore.metrics.evaluate import Evaluation, evaluate
from SegCore.metrics.inputs import LabelFile, image_sign, label_values, read_labels
from SegCore.metrics.overlap import OverlapCounts, overlap_metrics
from SegCore.metrics.report import write_report
from SegCore.metrics.summary import describe, summarise
from SegCore.metrics.surface import SurfaceDistances, surface_distances

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "METRICS",
    "METRICS_BY_KEY",
    "METRIC_KEYS",
    "STATUSES",
    "CasePair",
    "Evaluation",
    "LabelFile",
    "MetricInfo",
    "OverlapCounts",
    "SurfaceDistances",
    "compare_label_maps",
    "compare_masks",
    "compare_volumes",
    "describe",
    "evaluate",
    "find_cases",
    "image_diagonal_mm",
    "image_sign",
    "label_values",
    "overlap_metrics",
    "pair_cases",
    "read_labels",
    "summarise",
    "surface_distances",
    "write_report",
]
