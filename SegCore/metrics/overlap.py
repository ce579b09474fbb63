"""Overlap and volume metrics from voxel counts, with the empty-mask policy written into each formula.

Policy (docs/metrics.md): a ratio whose denominator is 0 because BOTH masks are empty is a perfect score (1, or a
0 difference): the prediction correctly says "absent". A ratio whose denominator is 0 because only the other
mask is empty is undefined and reported as NaN (null in JSON) with the row's status saying why: recall
and relative volume difference when the reference is empty, precision when the prediction is empty. Cohort
summaries count such values as undefined and report how many cases each statistic is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAN = float("nan")


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of a (prediction, reference) pair: true/false positives and negatives."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_masks(cls, pred: np.ndarray, ref: np.ndarray, total_voxels: int | None = None) -> OverlapCounts:
        """Counts from two bool arrays of one shape; `total_voxels` is the full image size when the arrays are
        crops (voxels outside a crop are background in both)."""
        tp = int(np.count_nonzero(pred & ref))
        n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        total = int(pred.size if total_voxels is None else total_voxels)
        return cls(tp=tp, fp=n_pred - tp, fn=n_ref - tp, tn=total - n_pred - n_ref + tp)

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        return self.tp + self.fn


def _ratio(numerator: float, denominator: float, *, both_empty: bool, if_both_empty: float) -> float:
    """numerator / denominator; when the denominator is 0: the both-empty value, else NaN (undefined)."""
    if denominator:
        return float(numerator / denominator)
    return if_both_empty if both_empty else NAN


def overlap_metrics(counts: OverlapCounts, voxel_volume_ml: float) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity and volumes (ml) from counts; keys as in `definitions.METRICS`."""
    both_empty = counts.n_pred == 0 and counts.n_ref == 0
    volume_pred = counts.n_pred * voxel_volume_ml
    volume_ref = counts.n_ref * voxel_volume_ml
    return {
        "dice": _ratio(2 * counts.tp, 2 * counts.tp + counts.fp + counts.fn, both_empty=both_empty, if_both_empty=1.0),
        "iou": _ratio(counts.tp, counts.tp + counts.fp + counts.fn, both_empty=both_empty, if_both_empty=1.0),
        "precision": _ratio(counts.tp, counts.n_pred, both_empty=both_empty, if_both_empty=1.0),
        "recall": _ratio(counts.tp, counts.n_ref, both_empty=both_empty, if_both_empty=1.0),
        # Undefined only when the reference fills the whole image (no negatives to find).
        "specificity": _ratio(counts.tn, counts.tn + counts.fp, both_empty=False, if_both_empty=NAN),
        "volume_pred_ml": volume_pred,
        "volume_ref_ml": volume_ref,
        "volume_diff_ml": volume_pred - volume_ref,
        "abs_volume_diff_ml": abs(volume_pred - volume_ref),
        "rel_volume_diff_pct": _ratio(100.0 * (counts.n_pred - counts.n_ref), counts.n_ref, both_empty=both_empty,
                                      if_both_empty=0.0),
    }
