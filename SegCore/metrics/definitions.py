"""What each metric and status is: names, units, direction, one-line definitions (docs/metrics.md has the formulas).

Tables, plots and the Slicer review panel read these, so a metric is described in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

# Normalised surface Dice tolerance when none is given (mm).
DEFAULT_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class MetricInfo:
    """key: column name in tables; title: for plots; unit: '' for fractions; higher_is_better: None for signed."""

    key: str
    title: str
    unit: str
    higher_is_better: bool | None
    description: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("dice", "Dice", "", True, "2 TP / (2 TP + FP + FN)"),
    MetricInfo("iou", "IoU (Jaccard)", "", True, "TP / (TP + FP + FN)"),
    MetricInfo("precision", "Precision", "", True, "TP / (TP + FP)"),
    MetricInfo("recall", "Recall (sensitivity)", "", True, "TP / (TP + FN)"),
    MetricInfo("specificity", "Specificity", "", True, "TN / (TN + FP)"),
    MetricInfo("volume_pred_ml", "Prediction volume", "ml", None, "voxels in the prediction x voxel volume"),
    MetricInfo("volume_ref_ml", "Reference volume", "ml", None, "voxels in the reference x voxel volume"),
    MetricInfo("volume_diff_ml", "Volume difference", "ml", None, "V_pred - V_ref (signed)"),
    MetricInfo("abs_volume_diff_ml", "Absolute volume difference", "ml", False, "|V_pred - V_ref|"),
    MetricInfo("rel_volume_diff_pct", "Relative volume difference", "%", None, "100 (V_pred - V_ref) / V_ref"),
    MetricInfo("hd_mm", "Hausdorff distance", "mm", False, "max of all surface distances, both directions"),
    MetricInfo("hd95_mm", "HD95", "mm", False,
               "max over the two directions of the 95th percentile of that direction's distances"),
    MetricInfo("hd95_pooled_mm", "HD95 (pooled)", "mm", False,
               "95th percentile of the distances of both directions pooled (MedPy hd95)"),
    MetricInfo("assd_mm", "ASSD", "mm", False, "mean of the pooled distances of both directions"),
    MetricInfo("msd_pred_to_ref_mm", "Mean distance pred to ref", "mm", False,
               "mean distance from prediction surface voxels to the reference surface"),
    MetricInfo("msd_ref_to_pred_mm", "Mean distance ref to pred", "mm", False,
               "mean distance from reference surface voxels to the prediction surface"),
    MetricInfo("surface_dice", "Surface Dice", "", True,
               "fraction of surface voxels of both masks within the tolerance of the other surface"),
)
METRIC_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)
METRICS_BY_KEY: dict[str, MetricInfo] = {m.key: m for m in METRICS}
SURFACE_KEYS: tuple[str, ...] = ("hd_mm", "hd95_mm", "hd95_pooled_mm", "assd_mm", "msd_pred_to_ref_mm",
                                 "msd_ref_to_pred_mm", "surface_dice")

# The status column: which empty-mask rule produced a row's values.
STATUS_OK = "ok"
STATUS_BOTH_EMPTY = "both_empty"
STATUS_REFERENCE_EMPTY = "reference_empty"
STATUS_PREDICTION_EMPTY = "prediction_empty"
STATUS_PREDICTION_MISSING = "prediction_missing"  # no file: scored as an empty prediction when asked to
STATUSES: dict[str, str] = {
    STATUS_OK: "both masks have voxels: every metric is computed",
    STATUS_BOTH_EMPTY: "neither mask has voxels: a correct 'absent'; overlap 1, distances 0, surface Dice 1",
    STATUS_REFERENCE_EMPTY: "only the prediction has voxels: overlap 0, recall and relative volume difference "
                            "undefined, distances = the image diagonal, surface Dice 0",
    STATUS_PREDICTION_EMPTY: "only the reference has voxels: overlap 0, precision undefined, distances = the "
                             "image diagonal, surface Dice 0",
    STATUS_PREDICTION_MISSING: "no prediction file for this case: scored as an empty prediction",
}
