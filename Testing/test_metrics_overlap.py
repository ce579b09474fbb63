"""Overlap and volume metrics by hand, the empty-mask policy for every metric, and bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SegCore.errors import SegCoreError
from SegCore.metrics import METRIC_KEYS, STATUSES, compare_masks, describe
from SegCore.metrics.definitions import SURFACE_KEYS


def test_overlap_counts_by_hand():
    pred, ref = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    pred[0, 0, :4] = True   # 4 voxels
    ref[0, 0, 2:] = True    # 4 voxels, 2 shared: TP 2, FP 2, FN 2, TN 120 - 6
    result = compare_masks(pred, ref, (2.0, 1.0, 0.5))  # voxel = 1 mm^3 = 0.001 ml
    assert result["dice"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert result["iou"] == pytest.approx(2 / 6)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["specificity"] == pytest.approx(114 / 116)
    assert result["volume_pred_ml"] == pytest.approx(0.004) and result["volume_ref_ml"] == pytest.approx(0.004)
    assert result["volume_diff_ml"] == 0.0 and result["rel_volume_diff_pct"] == 0.0
    assert list(result) == ["status", *METRIC_KEYS]


def test_volume_differences_are_signed_and_absolute():
    ref = np.zeros((3, 10, 10), bool)
    ref[1, :5, :4] = True     # 20 voxels
    pred = np.zeros_like(ref)
    pred[1, :5, :2] = True    # 10 voxels
    result = compare_masks(pred, ref, (1.0, 1.0, 10.0))  # 10 mm^3 per voxel
    assert result["volume_diff_ml"] == pytest.approx(-0.1)
    assert result["abs_volume_diff_ml"] == pytest.approx(0.1)
    assert result["rel_volume_diff_pct"] == pytest.approx(-50.0)


def test_both_empty_is_a_perfect_absent():
    empty = np.zeros((5, 6, 7), bool)
    result = compare_masks(empty, empty, (1.0, 1.0, 3.0))
    assert result["status"] == "both_empty"
    for key in ("dice", "iou", "precision", "recall", "specificity", "surface_dice"):
        assert result[key] == 1.0, key
    for key in ("hd_mm", "hd95_mm", "hd95_pooled_mm", "assd_mm", "msd_pred_to_ref_mm", "msd_ref_to_pred_mm",
                "volume_pred_ml", "volume_diff_ml", "abs_volume_diff_ml", "rel_volume_diff_pct"):
        assert result[key] == 0.0, key


@pytest.mark.parametrize("which", ["reference", "prediction"])
def test_one_side_empty_is_penalised_with_the_image_diagonal(which):
    shape, spacing = (5, 6, 7), (0.5, 1.0, 3.0)
    mask, empty = np.zeros(shape, bool), np.zeros(shape, bool)
    mask[2, 2:4, 2:5] = True
    pred, ref = (mask, empty) if which == "reference" else (empty, mask)
    result = compare_masks(pred, ref, spacing)
    assert result["status"] == f"{which}_empty"
    diagonal = math.sqrt((7 * 0.5) ** 2 + (6 * 1.0) ** 2 + (5 * 3.0) ** 2)
    for key in SURFACE_KEYS:
        assert result[key] == (0.0 if key == "surface_dice" else pytest.approx(diagonal)), key
    assert result["dice"] == 0.0 and result["iou"] == 0.0
    if which == "reference":  # nothing to find: recall and relative volume difference are undefined
        assert math.isnan(result["recall"]) and math.isnan(result["rel_volume_diff_pct"])
        assert result["precision"] == 0.0
        assert result["specificity"] == pytest.approx(1 - 6 / (5 * 6 * 7))
    else:  # nothing predicted: precision is undefined
        assert math.isnan(result["precision"])
        assert result["recall"] == 0.0 and result["rel_volume_diff_pct"] == -100.0
        assert result["specificity"] == 1.0
    undefined = {k for k in METRIC_KEYS if isinstance(result[k], float) and math.isnan(result[k])}
    assert undefined <= {"recall", "rel_volume_diff_pct", "precision"}
    assert result["status"] in STATUSES


def test_undefined_values_are_counted_not_averaged():
    stats = describe([1.0, float("nan"), 3.0, 5.0])
    assert stats["n_valid"] == 3 and stats["n_undefined"] == 1
    assert stats["mean"] == pytest.approx(3.0) and stats["median"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(np.std([1.0, 3.0, 5.0], ddof=1))
    assert stats["iqr"] == pytest.approx(np.percentile([1, 3, 5], 75) - np.percentile([1, 3, 5], 25))
    assert stats["min"] == 1.0 and stats["max"] == 5.0
    single = describe([2.0])
    assert single["mean"] == 2.0 and math.isnan(single["std"]) and single["n_valid"] == 1


@pytest.mark.parametrize(("values", "message"), [
    (np.array([[[0, 1, 2]]]), "not binary"),
    (np.array([[[0.0, 0.4, 1.0]]]), "not binary"),
    (np.array([[[0, -1, 1]]]), "not binary"),
])
def test_non_binary_masks_are_refused(values, message):
    with pytest.raises(SegCoreError, match=message) as info:
        compare_masks(values, np.zeros(values.shape, bool))
    assert "compare_label_maps" in str(info.value)


def test_shape_spacing_and_tolerance_errors():
    a = np.zeros((3, 4, 5), bool)
    with pytest.raises(SegCoreError, match="shapes differ"):
        compare_masks(a, np.zeros((3, 4, 6), bool))
    with pytest.raises(SegCoreError, match="needs 3 spacings"):
        compare_masks(a, a, (1.0, 1.0))
    with pytest.raises(SegCoreError, match="spacing must be positive"):
        compare_masks(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(SegCoreError, match="tolerance"):
        compare_masks(a, a, tolerance_mm=-1)
    with pytest.raises(SegCoreError, match="2D .* or 3D"):
        compare_masks(np.zeros(5, bool), np.zeros(5, bool))
