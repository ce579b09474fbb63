"""Surface metrics: hand-computed distances (cubes, single voxels, shifts, anisotropic spacing) and agreement
with a brute-force all-pairs implementation written independently here (scipy erosion + cdist)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from SegCore.errors import SegCoreError
from SegCore.metrics import compare_masks, surface_distances


def brute_force(pred, ref, spacing_xyz, direction=None):
    """Directed distance sets by definition: boundary = mask minus 6-connected erosion (outside = background),
    all pairs of boundary-voxel centres in physical mm."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    spacing = np.asarray(spacing_xyz, float)
    matrix = np.diag(spacing) if direction is None else np.asarray(direction) * spacing[None, :]

    def points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, structure, border_value=0)
        ijk = np.argwhere(surface)[:, ::-1].astype(float)  # (z, y, x) -> (i, j, k)
        return ijk @ matrix.T

    a, b = points(pred), points(ref)
    pairwise = cdist(a, b)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def cube(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_single_voxels_at_a_known_distance_with_anisotropic_spacing():
    pred, ref = np.zeros((8, 6, 7), bool), np.zeros((8, 6, 7), bool)
    pred[2, 3, 4] = True
    ref[5, 3, 4] = True  # 3 slices apart; z spacing 2.0 mm
    result = compare_masks(pred, ref, (0.5, 0.7, 2.0), tolerance_mm=6.0)
    for key in ("hd_mm", "hd95_mm", "hd95_pooled_mm", "assd_mm", "msd_pred_to_ref_mm", "msd_ref_to_pred_mm"):
        assert result[key] == pytest.approx(6.0, abs=1e-12), key
    assert result["surface_dice"] == 1.0  # exactly at the tolerance counts as within
    assert compare_masks(pred, ref, (0.5, 0.7, 2.0), tolerance_mm=5.9)["surface_dice"] == 0.0
    assert result["dice"] == 0.0 and result["status"] == "ok"


@pytest.mark.parametrize(("shift_zyx", "spacing_xyz", "expected_hd"), [
    ((0, 0, 2), (0.7, 1.0, 3.0), 1.4),                        # 2 voxels along x at 0.7 mm
    ((1, 0, 0), (0.7, 1.0, 3.0), 3.0),                        # 1 slice at 3 mm
    ((1, 0, 1), (0.7, 1.0, 2.0), math.sqrt(0.7 ** 2 + 2.0 ** 2)),  # the far corner, diagonally
    ((0, -3, 0), (0.7, 0.9, 3.0), 2.7),
])
def test_shifted_cube_hausdorff_is_the_physical_shift(shift_zyx, spacing_xyz, expected_hd):
    ref = cube((16, 18, 20), (4, 5, 6), 8)
    pred = np.roll(ref, shift_zyx, axis=(0, 1, 2))
    result = compare_masks(pred, ref, spacing_xyz)
    assert result["hd_mm"] == pytest.approx(expected_hd, abs=1e-12)
    # A pure translation is symmetric: both directions see the same distances.
    assert result["msd_pred_to_ref_mm"] == pytest.approx(result["msd_ref_to_pred_mm"], abs=1e-12)


def test_nested_cubes_known_distances():
    ref = cube((14, 14, 14), (2, 2, 2), 10)
    pred = cube((14, 14, 14), (4, 4, 4), 6)  # 2 voxels inside on every side
    result = compare_masks(pred, ref, (1.5, 1.5, 1.5))
    # Every inner surface voxel is 2 voxels (3 mm) from the nearest outer face; the outer corners are
    # 2*sqrt(3) voxels from the inner corners.
    assert result["msd_pred_to_ref_mm"] == pytest.approx(3.0, abs=1e-12)
    assert result["hd_mm"] == pytest.approx(3.0 * math.sqrt(3), abs=1e-12)
    assert result["dice"] == pytest.approx(2 * 216 / (1000 + 216))
    assert result["iou"] == pytest.approx(216 / 1000)
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(0.216)
    assert result["volume_ref_ml"] == pytest.approx(1000 * 1.5 ** 3 / 1000)
    assert result["volume_diff_ml"] == pytest.approx((216 - 1000) * 1.5 ** 3 / 1000)
    assert result["rel_volume_diff_pct"] == pytest.approx(100 * (216 - 1000) / 1000)


def test_identical_masks_have_zero_distances_and_full_scores():
    ref = cube((10, 10, 10), (2, 3, 1), 5)
    result = compare_masks(ref.astype(np.uint8), ref, (0.3, 0.4, 5.0))
    assert result["hd_mm"] == result["assd_mm"] == 0.0
    assert result["dice"] == result["surface_dice"] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_agree_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(5, 12, size=3))
    pred = ndimage.binary_opening(rng.random(shape) < 0.55) | (rng.random(shape) < 0.05)
    ref = ndimage.binary_dilation(rng.random(shape) < 0.2)
    pred[0, 0, 0] = ref[-1, -1, -1] = True  # masks touching the array edge: outside counts as background
    spacing = tuple(rng.uniform(0.3, 3.0, size=3))
    forward, backward = brute_force(pred, ref, spacing)
    pooled = np.concatenate([forward, backward])
    tolerance = float(np.median(pooled))
    result = compare_masks(pred, ref, spacing, tolerance_mm=tolerance)
    assert result["hd_mm"] == pytest.approx(pooled.max(), abs=1e-9)
    assert result["hd95_mm"] == pytest.approx(max(np.percentile(forward, 95), np.percentile(backward, 95)), abs=1e-9)
    assert result["hd95_pooled_mm"] == pytest.approx(np.percentile(pooled, 95), abs=1e-9)
    assert result["assd_mm"] == pytest.approx(pooled.mean(), abs=1e-9)
    assert result["msd_pred_to_ref_mm"] == pytest.approx(forward.mean(), abs=1e-9)
    assert result["msd_ref_to_pred_mm"] == pytest.approx(backward.mean(), abs=1e-9)
    assert result["surface_dice"] == pytest.approx(np.mean(pooled <= tolerance + 1e-9), abs=1e-12)
    distances = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(distances.pred_to_ref), np.sort(forward), atol=1e-9)
    np.testing.assert_allclose(np.sort(distances.ref_to_pred), np.sort(backward), atol=1e-9)


def test_per_direction_and_pooled_hd95_differ_as_defined():
    # A small prediction inside a large reference: few short pred->ref distances, many long ref->pred ones.
    ref = cube((20, 20, 20), (2, 2, 2), 16)
    pred = cube((20, 20, 20), (8, 8, 8), 3)
    forward, backward = brute_force(pred, ref, (1.0, 1.0, 1.0))
    result = compare_masks(pred, ref)
    per_direction = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assert result["hd95_mm"] == pytest.approx(per_direction)
    assert result["hd95_pooled_mm"] == pytest.approx(np.percentile(np.concatenate([forward, backward]), 95))
    assert result["hd95_mm"] != pytest.approx(result["hd95_pooled_mm"])


def test_rotated_direction_keeps_distances_and_sheared_grid_is_exact(oblique_direction):
    rng = np.random.default_rng(7)
    pred = ndimage.binary_dilation(rng.random((7, 8, 9)) < 0.1)
    ref = ndimage.binary_dilation(rng.random((7, 8, 9)) < 0.1)
    spacing = (0.8, 1.1, 2.5)
    plain = compare_masks(pred, ref, spacing)
    rotated = compare_masks(pred, ref, spacing, direction=oblique_direction)
    for key in ("hd_mm", "hd95_mm", "assd_mm", "surface_dice", "volume_pred_ml"):
        assert rotated[key] == pytest.approx(plain[key], abs=1e-9), key
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]])
    shear /= np.linalg.norm(shear, axis=0)  # unit columns, not orthogonal
    forward, backward = brute_force(pred, ref, spacing, direction=shear)
    sheared = compare_masks(pred, ref, spacing, direction=shear)
    assert sheared["hd_mm"] == pytest.approx(max(forward.max(), backward.max()), abs=1e-9)
    assert sheared["assd_mm"] == pytest.approx(np.concatenate([forward, backward]).mean(), abs=1e-9)


def test_two_dimensional_masks():
    pred, ref = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    pred[2:5, 2:5] = True
    ref[2:5, 4:7] = True  # shifted 2 pixels along x at 0.5 mm
    forward, backward = brute_force(pred, ref, (0.5, 2.0))
    result = compare_masks(pred, ref, (0.5, 2.0))
    assert result["hd_mm"] == pytest.approx(1.0)
    assert result["assd_mm"] == pytest.approx(np.concatenate([forward, backward]).mean())


def test_surface_distances_of_an_empty_mask_is_an_error():
    with pytest.raises(SegCoreError, match="prediction mask is empty"):
        surface_distances(np.zeros((3, 3, 3), bool), np.ones((3, 3, 3), bool))
