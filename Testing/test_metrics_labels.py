"""Multi-label tables, Volumes with geometry (grid checks, resampling), and cohort summaries."""

from __future__ import annotations

import numpy as np
import pytest

from SegCore.errors import SegCoreError
from SegCore.metrics import (
    compare_label_maps,
    compare_masks,
    compare_volumes,
    summarise,
)
from SegCore.volume import Volume


def two_label_maps():
    ref = np.zeros((12, 14, 16), np.uint8)
    ref[2:8, 3:9, 2:8] = 1
    ref[4:9, 4:10, 10:15] = 3
    pred = np.roll(ref, 1, axis=2)
    pred[pred == 3] = 0
    pred[0, 0, 0] = 5  # a stray label only in the prediction
    return pred, ref


def test_label_maps_give_one_row_per_label_matching_binary_comparisons():
    pred, ref = two_label_maps()
    spacing = (0.8, 0.9, 2.5)
    rows = compare_label_maps(pred, ref, spacing, labels={1: "liver", 3: "tumour", 7: "absent"})
    assert [(r["label"], r["label_name"], r["status"]) for r in rows] == [
        (1, "liver", "ok"), (3, "tumour", "prediction_empty"), (7, "absent", "both_empty")]
    binary = compare_masks(pred == 1, ref == 1, spacing)
    for key, value in binary.items():
        assert rows[0][key] == pytest.approx(value, nan_ok=True), key
    # Image diagonal penalty uses the whole image, not the crop the labels were measured on.
    whole = compare_masks(pred == 3, ref == 3, spacing)
    assert rows[1]["hd_mm"] == pytest.approx(whole["hd_mm"])


def test_labels_default_to_every_nonzero_value_present():
    pred, ref = two_label_maps()
    rows = compare_label_maps(pred, ref)
    assert [(r["label"], r["status"]) for r in rows] == [(1, "ok"), (3, "prediction_empty"),
                                                         (5, "reference_empty")]
    assert compare_label_maps(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)) == []


def test_label_table_forms_and_errors():
    pred, ref = two_label_maps()
    assert [r["label_name"] for r in compare_label_maps(pred, ref, labels=[3, 1])] == ["label_3", "label_1"]
    with pytest.raises(SegCoreError, match="background"):
        compare_label_maps(pred, ref, labels={0: "background"})
    with pytest.raises(SegCoreError, match="not a label map"):
        compare_label_maps(pred.astype(float) + 0.5, ref)
    float_rows = compare_label_maps(pred.astype(np.float32), ref, labels=[1])
    assert float_rows[0]["dice"] == compare_label_maps(pred, ref, labels=[1])[0]["dice"]


def test_volumes_on_different_grids_are_refused_with_the_difference_named():
    pred, ref = two_label_maps()
    ref_volume = Volume.create(ref, spacing_xyz_mm=(0.8, 0.9, 2.5))
    shifted = Volume.create(pred, spacing_xyz_mm=(0.8, 0.9, 2.5), origin_lps=(0.0, 0.0, 2.0))
    with pytest.raises(SegCoreError, match="origins differ") as info:
        compare_volumes(shifted, ref_volume)
    assert "--resample" in str(info.value)
    with pytest.raises(SegCoreError, match="channels"):
        compare_volumes(Volume.create(np.stack([pred, pred])), ref_volume)


def test_resample_maps_a_finer_prediction_onto_the_reference_grid():
    ref = np.zeros((8, 10, 12), np.uint8)
    ref[2:6, 3:8, 4:9] = 2
    ref_volume = Volume.create(ref, spacing_xyz_mm=(2.0, 2.0, 2.0), origin_lps=(10.0, 20.0, 30.0))
    # The same object on a 1 mm grid whose voxel centres include the 2 mm centres.
    fine = ref.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    fine_volume = Volume.create(fine, spacing_xyz_mm=(1.0, 1.0, 1.0), origin_lps=(9.5, 19.5, 29.5))
    with pytest.raises(SegCoreError, match="sizes differ"):
        compare_volumes(fine_volume, ref_volume)
    (row,) = compare_volumes(fine_volume, ref_volume, resample=True)
    assert row["label"] == 2 and row["dice"] == 1.0 and row["hd_mm"] == 0.0


def test_oblique_volumes_measure_the_same_as_axis_aligned(oblique_direction):
    pred, ref = two_label_maps()
    plain = compare_volumes(Volume.create(pred, (0.8, 0.9, 2.5)), Volume.create(ref, (0.8, 0.9, 2.5)), labels=[1])
    tilted = compare_volumes(Volume.create(pred, (0.8, 0.9, 2.5), direction_lps=oblique_direction),
                             Volume.create(ref, (0.8, 0.9, 2.5), direction_lps=oblique_direction), labels=[1])
    for key in ("dice", "hd_mm", "hd95_mm", "assd_mm", "volume_ref_ml"):
        assert tilted[0][key] == pytest.approx(plain[0][key], abs=1e-9)


def test_summary_rows_per_group_label_and_metric():
    rows = [
        {"group": "a", "case": "c1", "label": 1, "label_name": "liver", "status": "ok", "dice": 0.8},
        {"group": "a", "case": "c2", "label": 1, "label_name": "liver", "status": "prediction_empty", "dice": 0.0},
        {"group": "b", "case": "c1", "label": 1, "label_name": "liver", "status": "ok", "dice": 0.9},
    ]
    summary = summarise(rows, ["dice"])
    assert [(s["group"], s["metric"], s["n_cases"]) for s in summary] == [("a", "dice", 2), ("b", "dice", 1)]
    assert summary[0]["mean"] == pytest.approx(0.4) and summary[0]["n_prediction_empty"] == 1
    assert summary[0]["n_ok"] == 1 and summary[1]["median"] == pytest.approx(0.9)
