"""resample_to_grid on integer images (CT in HU): linear values are rounded half to even and clipped, not truncated."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from SegCore.volume import Grid, Volume, resample_to_grid, to_sitk

# HU along x, chosen so that neighbour means end in .5 on both sides of zero (-999.5, -500.5, -1.5, 6.5, ...).
HU_X = np.array([-1000, -999, -2, -1, 6, 7, 8, 9, 1500], dtype=np.int16)


def ct_row_volume(spacing_x: float = 2.0) -> Volume:
    """HU_X along x, repeated over 2 slices and 3 rows, x spacing `spacing_x` mm, identity direction."""
    return Volume.create(np.tile(HU_X, (2, 3, 1)), (spacing_x, 1.0, 1.0), (0.0, 0.0, 0.0))


def shifted_grid(volume: Volume, shift_voxels: float, size_x: int) -> Grid:
    spacing_x = volume.grid.spacing_xyz_mm[0]
    return Grid((2, 3, size_x), volume.grid.spacing_xyz_mm, (shift_voxels * spacing_x, 0.0, 0.0),
                volume.grid.direction_lps)


def test_half_voxel_shift_rounds_half_to_even_by_hand():
    source = ct_row_volume()
    out = resample_to_grid(source, shifted_grid(source, 0.5, len(HU_X) - 1), interpolation="linear")
    assert out.array.dtype == np.int16
    # By hand: the mean of neighbours, -999.5 -> -1000, -500.5 -> -500, -1.5 -> -2, 2.5 -> 2, 6.5 -> 6,
    # 7.5 -> 8, 8.5 -> 8, 754.5 -> 754 (truncation gave -999, -500, -1, 2, 6, 7, 8, 754).
    expected = np.array([-1000, -500, -2, 2, 6, 8, 8, 754], dtype=np.int16)
    assert np.array_equal(out.array[0, 0], expected)
    assert np.array_equal(out.array, np.broadcast_to(expected, (2, 3, 8)))


def test_two_voxel_shift_with_fractions_rounds_to_nearest():
    source = ct_row_volume()
    # 1.3 voxels: value = 0.7 * a[i + 1] + 0.3 * a[i + 2]; computed here in float64 without ITK.
    out = resample_to_grid(source, shifted_grid(source, 1.3, len(HU_X) - 2), interpolation="linear")
    exact = 0.7 * HU_X[1:-1].astype(float) + 0.3 * HU_X[2:].astype(float)
    assert np.all(np.abs(exact - np.floor(exact) - 0.5) > 1e-3)  # no ties: rounding is unambiguous here
    assert np.array_equal(out.array[1, 2], np.round(exact).astype(np.int16))
    assert out.array[1, 2, 0] == -700  # 0.7 * -999 + 0.3 * -2 = -699.9 (truncation gave -699)


def test_oblique_ct_matches_float64_resampling_then_rounding(oblique_direction, rng):
    hu = rng.integers(-1024, 3072, size=(9, 10, 11)).astype(np.int16)
    source = Volume.create(hu, (0.8, 0.9, 2.5), (-40.0, 12.0, 300.0), oblique_direction)
    target = Grid((12, 13, 14), (0.7, 0.7, 1.6), tuple(source.grid.index_to_lps([[0.37, -0.6, 0.21]])[0]),
                  tuple(tuple(r) for r in oblique_direction.tolist()))
    out = resample_to_grid(source, target, interpolation="linear", fill_value=-1024)
    # Oracle: ITK in float64 on the same geometry, then numpy's rounding.
    reference = to_sitk(Volume(np.zeros(target.shape_zyx, np.float64), target))
    float64 = sitk.Resample(sitk.Cast(to_sitk(source), sitk.sitkFloat64), reference, sitk.Transform(),
                            sitk.sitkLinear, -1024.0, sitk.sitkFloat64)
    expected = np.rint(sitk.GetArrayFromImage(float64)).astype(np.int16)
    assert out.array.dtype == np.int16 and np.array_equal(out.array, expected)
    assert (out.array == -1024).any() and (out.array > -1024).mean() > 0.5  # both outside and inside the source
    truncated = np.trunc(sitk.GetArrayFromImage(float64)).astype(np.int16)
    assert (truncated != expected).mean() > 0.3  # the bug this guards against would show


def test_fill_value_is_clipped_to_the_dtype_range():
    source = Volume.create(np.full((2, 3, 4), 200, np.uint8))
    half_outside = shifted_grid(source, 2.0, 4)
    for interpolation in ("nearest", "linear"):
        low = resample_to_grid(source, half_outside, interpolation=interpolation, fill_value=-5)
        high = resample_to_grid(source, half_outside, interpolation=interpolation, fill_value=300)
        assert low.array.dtype == np.uint8
        assert np.array_equal(low.array[0, 0], [200, 200, 0, 0])  # not -5 wrapped to 251
        assert np.array_equal(high.array[0, 0], [200, 200, 255, 255])  # not 300 wrapped to 44


def test_labels_and_float_images_keep_their_values():
    labels = Volume.create(np.tile(np.array([0, 3, 3, 7], np.uint8), (2, 3, 1)))
    moved = resample_to_grid(labels, shifted_grid(labels, 1.0, 3))  # nearest, a whole voxel: exact
    assert np.array_equal(moved.array[0, 0], [3, 3, 7])
    image = Volume.create(np.tile(np.array([0.25, 1.0, -3.5], np.float32), (2, 3, 1)))
    half = resample_to_grid(image, shifted_grid(image, 0.5, 2), interpolation="linear")
    assert half.array.dtype == np.float32
    np.testing.assert_allclose(half.array[0, 0], [0.625, -1.25])  # not rounded
    mask = Volume.create(np.tile(np.array([False, True, True], bool), (2, 3, 1)))
    assert np.array_equal(resample_to_grid(mask, shifted_grid(mask, 0.5, 2), interpolation="linear").array[0, 0],
                          [False, True])  # 0.5 rounds to even (0), 1.0 stays
