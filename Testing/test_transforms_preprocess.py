"""Preprocessing steps (SegCore.transforms): spatial steps invert exactly and agree with SimpleITK; the spec is
resolved, hashed and checked. Intensity steps are in test_transforms_intensity.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SegCore.errors import SegCoreError
from SegCore.io import read_image, read_label, write_image
from SegCore.transforms import STEPS, Preprocessing
from SegCore.volume import Volume, from_sitk, to_sitk

DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # a sagittal-like series
}
SPACING = (0.8, 0.9, 2.5)  # anisotropic (x, y, z)
ORIGIN = (10.0, -5.0, 3.0)


@pytest.fixture(params=[*DIRECTIONS, "oblique"])
def direction(request, oblique_direction):
    return oblique_direction if request.param == "oblique" else DIRECTIONS[request.param]


def case(direction, rng, shape=(12, 20, 18), channels=2):
    """A smooth multi-channel image (channel c = (c + 1) x channel 0) and a label map of blobs with 0 around."""
    base = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 100
    label = np.zeros(shape, dtype=np.uint8)
    label[3:9, 4:15, 5:12] = 1
    label[5:8, 8:12, 6:10] = 2
    label[4:6, 12:16, 9:13] = 3
    base = np.where(label > 0, base + 500, -1000.0)
    image = np.stack([(c + 1) * base for c in range(channels)]).astype(np.float32)
    return (Volume.create(image, SPACING, ORIGIN, direction), Volume.create(label, SPACING, ORIGIN, direction))


def oracle(volume: Volume, grid, interpolator) -> np.ndarray:
    """SimpleITK's resampling of a (Z, Y, X) volume onto `grid`, edge values extended outside."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(to_sitk(Volume(np.zeros(grid.shape_zyx, np.float32), grid)))
    resampler.SetInterpolator(interpolator)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(to_sitk(volume)))


def corners_lps(image) -> np.ndarray:
    """SimpleITK's physical positions of the 8 outer voxel corners of a sitk image."""
    size = image.GetSize()
    return np.array([image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == 0 else n - 0.5)
                                                                   for c, n in zip(corner, size, strict=True)])
                     for corner in np.ndindex(2, 2, 2)])


def test_reorient_equals_simpleitk_dicomorient_and_inverts(direction, rng):
    image, label = case(direction, rng)
    pre = Preprocessing([{"name": "reorient"}])
    out = pre.apply(image, label)
    for c in range(2):
        expected = from_sitk(sitk.DICOMOrient(to_sitk(image.channel(c)), "LPS"))
        assert out.grid.mismatch(expected.grid) is None
        assert np.array_equal(out.image[c], expected.array)
    columns = np.asarray(out.grid.direction_lps)
    assert np.array_equal(np.argmax(np.abs(columns), axis=0), [0, 1, 2]) and np.all(np.diag(columns) > 0)
    back = pre.invert_label(out.label, out.record)
    assert back.grid.same_as(label.grid) and np.array_equal(back.array, label.array)


def test_label_round_trip_through_every_spatial_step_is_exact(direction, rng, tmp_path):
    image, label = case(direction, rng)
    write_image(image, tmp_path / "image.nrrd")
    write_image(label, tmp_path / "label.nrrd")
    image, label = read_image(tmp_path / "image.nrrd"), read_label(tmp_path / "label.nrrd")
    pre = Preprocessing([{"name": "reorient"}, {"name": "resample", "spacing_xyz_mm": [None, None, None]},
                         {"name": "crop_foreground", "threshold": -999, "margin_zyx": [1, 2, 3]},
                         {"name": "pad", "multiple_zyx": [8, 8, 8], "min_zyx": [1, 40, 1]}])
    # upsampling by whole factors (2, 3, 1 along the reoriented x, y, z) maps every source voxel back to itself
    reoriented = Preprocessing([{"name": "reorient"}]).apply(image).grid
    factors = np.array([2.0, 3.0, 1.0])
    steps = pre.spec
    steps[1]["spacing_xyz_mm"] = (np.asarray(reoriented.spacing_xyz_mm) / factors).tolist()
    pre = Preprocessing(steps)
    out = pre.apply(image, label)
    assert out.image.dtype == np.float32 and out.label.dtype == np.uint8 and out.image.shape[0] == 2
    assert all(n % 8 == 0 for n in out.grid.shape_zyx) and out.grid.shape_zyx[1] >= 40
    record = json.loads(json.dumps(out.record))  # as the cache and the checkpoint keep it
    back = pre.invert_label(out.label, record)
    assert back.grid.mismatch(label.grid) is None
    assert np.array_equal(back.array, label.array)
    one_hot = np.stack([(out.label == k).astype(np.float32) for k in range(4)])
    probabilities = pre.invert_probabilities(one_hot, record)
    assert probabilities.array.dtype == np.float32 and probabilities.grid.same_as(label.grid)
    assert np.array_equal(probabilities.array.argmax(axis=0), label.array)
    np.testing.assert_allclose(probabilities.array.sum(axis=0), 1.0, atol=1e-6)
    # every channel moved alike: a linear resampling keeps channel 1 = 2 x channel 0
    np.testing.assert_allclose(out.image[1], 2 * out.image[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("order, interpolator", [(0, sitk.sitkNearestNeighbor), (1, sitk.sitkLinear),
                                                  (3, sitk.sitkBSpline3)])
def test_resample_and_its_inverse_equal_simpleitk(direction, rng, order, interpolator):
    image, label = case(direction, rng, channels=1)
    # finer along x, coarser by more than 2 along z (its inverse extrapolates at the edges); no voxel centre
    # falls half-way between two others, where rounding could go either way
    pre = Preprocessing([{"name": "resample", "spacing_xyz_mm": [0.55, 1.3, 5.3], "image_order": order}])
    out = pre.apply(image, label)
    np.testing.assert_allclose(out.image[0], oracle(image.channel(0), out.grid, interpolator), atol=2e-3)
    assert np.array_equal(out.label, oracle(label, out.grid, sitk.sitkNearestNeighbor))
    back = pre.invert_label(out.label, out.record)
    assert np.array_equal(back.array, oracle(Volume(out.label, out.grid), label.grid, sitk.sitkNearestNeighbor))
    probabilities = rng.random((3,) + out.grid.shape_zyx).astype(np.float32)
    inverted = pre.invert_probabilities(probabilities, out.record)
    for k in range(3):
        expected = oracle(Volume(probabilities[k], out.grid), label.grid, sitk.sitkLinear)
        np.testing.assert_allclose(inverted.array[k], expected, atol=1e-5)


def test_resampled_grid_keeps_the_physical_box(oblique_direction, rng):
    image, _ = case(oblique_direction, rng, channels=1)
    spacing = [0.55, 1.3, 5.3]
    out = Preprocessing([{"name": "resample", "spacing_xyz_mm": spacing}]).apply(image)
    source, target = corners_lps(to_sitk(image)), corners_lps(to_sitk(Volume(out.image[0], out.grid)))
    np.testing.assert_allclose(target.mean(axis=0), source.mean(axis=0), atol=1e-6)  # same centre
    np.testing.assert_allclose(out.grid.spacing_xyz_mm, spacing)
    extent_source = np.asarray(image.grid.shape_zyx[::-1]) * SPACING
    extent_target = np.asarray(out.grid.shape_zyx[::-1]) * spacing
    assert np.all(np.abs(extent_target - extent_source) <= np.asarray(spacing) / 2 + 1e-9)  # sizes rounded


def test_crop_and_pad_grids_equal_simpleitk(oblique_direction, rng):
    image, label = case(oblique_direction, rng, channels=1)
    cropped = Preprocessing([{"name": "crop_box", "start_zyx": [2, 3, 4], "stop_zyx": [9, 30, 11]}]).apply(
        image, label)
    expected = from_sitk(sitk.RegionOfInterest(to_sitk(image.channel(0)), [7, 17, 7], [4, 3, 2]))  # y stop clipped
    assert cropped.grid.mismatch(expected.grid) is None and np.array_equal(cropped.image[0], expected.array)
    assert cropped.record["steps"][0]["stop_zyx"] == [9, 20, 11]
    for mode, value, pad in [("constant", -7.0, sitk.ConstantPad), ("edge", 0.0, sitk.ZeroFluxNeumannPad)]:
        pre = Preprocessing([{"name": "pad", "multiple_zyx": [16, 1, 8], "min_zyx": [1, 25, 1],
                              "mode": mode, "value": value}])
        out = pre.apply(image, label)
        # by hand: z 12 -> 16 (2 + 2), y 20 -> 25 (2 + 3), x 18 -> 24 (3 + 3); pads are centred
        args = ([3, 2, 2], [3, 3, 2]) + ((value,) if mode == "constant" else ())
        expected = from_sitk(pad(to_sitk(image.channel(0)), *args))
        assert out.grid.mismatch(expected.grid) is None and np.array_equal(out.image[0], expected.array)
        assert out.label.shape == (16, 25, 24) and out.label.sum() == label.array.sum()
        assert np.array_equal(pre.invert_label(out.label, out.record).array, label.array)


def test_crop_foreground_and_to_label_boxes_by_hand(rng):
    image, label = case(np.eye(3), rng, channels=1)
    array = image.array[0].copy()
    array[0, 0, 0] = 50.0  # a bright voxel far out grows the foreground box to the corner
    image = image.with_array(array[None])
    out = Preprocessing([{"name": "crop_foreground", "margin_zyx": [1, 1, 1], "threshold": 0}]).apply(image, label)
    nonzero = np.nonzero(array > 0)
    start = [max(0, int(n.min()) - 1) for n in nonzero]
    stop = [min(s, int(n.max()) + 2) for n, s in zip(nonzero, array.shape, strict=True)]
    assert [out.record["steps"][0][key] for key in ("start_zyx", "stop_zyx")] == [start, stop]
    out = Preprocessing([{"name": "crop_to_label", "margin_zyx": [2, 0, 1]}]).apply(image, label)
    assert out.record["steps"][0]["start_zyx"] == [1, 4, 4] and out.record["steps"][0]["stop_zyx"] == [11, 16, 14]
    assert out.label.sum() == label.array.sum()
    empty = Preprocessing([{"name": "crop_foreground", "threshold": 1e9}]).apply(image, label)
    assert empty.record["steps"][0]["empty"] and empty.grid.same_as(image.grid)
    with pytest.raises(SegCoreError, match="crop_to_label needs a label"):
        Preprocessing([{"name": "crop_to_label"}]).apply(image)


def test_one_hot_linear_labels_match_argmax_of_linear_masks(rng):
    image, label = case(DIRECTIONS["flipped"], rng, channels=1)
    pre = Preprocessing([{"name": "resample", "spacing_xyz_mm": [0.37, 0.41, 1.1], "label_mode": "one_hot_linear"}])
    out = pre.apply(image, label)
    weights = np.stack([oracle(label.with_array((label.array == k).astype(np.float32)), out.grid, sitk.sitkLinear)
                        for k in range(4)])
    assert np.mean(out.label == weights.argmax(axis=0)) > 0.999  # float ties may fall either way
    assert set(np.unique(out.label)) == {0, 1, 2, 3}


def test_spec_is_resolved_and_digest_is_canonical():
    pre = Preprocessing([{"name": "resample", "spacing_xyz_mm": [1, 1, 2.5]}, {"name": "percentile_minmax"}])
    spec = pre.spec
    assert spec[0] == {"name": "resample", "spacing_xyz_mm": [1.0, 1.0, 2.5], "image_order": 3,
                       "label_mode": "nearest"}
    assert spec[1]["upper"] == 99.98 and spec[1]["lower"] == 0.0 and spec[1]["channels"] is None
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    assert pre.digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert Preprocessing(json.loads(json.dumps(spec))).digest == pre.digest
    assert Preprocessing([{"spacing_xyz_mm": [1.0, 1.0, 2.5], "name": "resample"},
                          {"name": "percentile_minmax", "upper": 99.98}]).digest == pre.digest
    spec[0]["image_order"] = 1  # spec is a copy
    assert pre.spec[0]["image_order"] == 3
    code = ("from SegCore.transforms import Preprocessing; print(Preprocessing([{'name': 'resample', "
            "'spacing_xyz_mm': [1, 1, 2.5]}, {'name': 'percentile_minmax'}]).digest)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "7", "PATH": ""})
    assert other.stdout.strip() == pre.digest


@pytest.mark.parametrize("change", [
    {"spacing_xyz_mm": [1.0, 1.0, 2.0]}, {"image_order": 1}, {"label_mode": "one_hot_linear"},
    {"spacing_xyz_mm": [1.0, None, 2.5]},
])
def test_digest_changes_with_any_parameter(change):
    base = {"name": "resample", "spacing_xyz_mm": [1, 1, 2.5]}
    assert Preprocessing([{**base, **change}]).digest != Preprocessing([base]).digest
    assert Preprocessing([{"name": "reorient"}, base]).digest != Preprocessing([base, {"name": "reorient"}]).digest


@pytest.mark.parametrize("steps, words", [
    ([{"name": "resize"}], ["unknown name 'resize'", *STEPS]),
    ([{"name": "pad", "multiple": [2, 2, 2]}], ["unknown parameter(s) multiple", "multiple_zyx", "min_zyx", "mode"]),
    ([{"name": "resample"}], ["needs the parameter 'spacing_xyz_mm'"]),
    ([{"name": "resample", "spacing_xyz_mm": [1, 0, 1]}], ["spacing_xyz_mm must be a list of three", "> 0"]),
    ([{"name": "resample", "spacing_xyz_mm": [1, 1]}], ["spacing_xyz_mm must be"]),
    ([{"name": "resample", "spacing_xyz_mm": [1, 1, 1], "image_order": 7}], ["image_order must be one of 0, 1, 3"]),
    ([{"name": "resample", "spacing_xyz_mm": [1, 1, 1], "image_order": True}], ["image_order must be one of"]),
    ([{"name": "resample", "spacing_xyz_mm": [1, 1, 1], "label_mode": "linear"}], ["'nearest', 'one_hot_linear'"]),
    ([{"name": "crop_foreground", "margin_zyx": [1, -1, 1]}], ["margin_zyx must be"]),
    ([{"name": "crop_box", "start_zyx": [0, 5, 0], "stop_zyx": [4, 5, 4]}], ["must be below stop_zyx"]),
    ([{"name": "pad", "mode": "reflect"}], ["'constant', 'edge'"]),
    ([{"name": "ct_window", "hu_min": 240, "hu_max": -160}], ["hu_min (240) must be below hu_max (-160)"]),
    ([{"name": "zscore", "mode": "slice", "axis": "w"}], ["axis must be one of 'z', 'y', 'x'"]),
    ([{"name": "percentile_minmax", "upper": 100.5}], ["upper must be a number >= 0 <= 100"]),
    ([{"name": "zscore", "channels": [0, 0]}], ["channels must be null (every channel)"]),
    ([{"name": "zscore", "axis": True}], ["axis must be one of"]),
    (["reorient"], ["step 0 must be a dict with a 'name'", *STEPS]),
    ({"name": "reorient"}, ["must be a list of steps", *STEPS]),
])
def test_bad_specs_are_refused_with_the_valid_choices(steps, words):
    with pytest.raises(SegCoreError) as error:
        Preprocessing(steps)
    text = str(error.value)
    assert "\n" not in text
    for word in words:
        assert word in text


def test_bad_inputs_to_apply_and_invert(rng):
    image, label = case(np.eye(3), rng, channels=1)
    pre = Preprocessing([{"name": "pad", "multiple_zyx": [8, 8, 8]}])
    shifted = Volume.create(label.array, SPACING, (11.0, -5.0, 3.0))
    with pytest.raises(SegCoreError, match="not on the image grid: origins differ"):
        pre.apply(image, shifted)
    with pytest.raises(SegCoreError, match="non-integer"):
        pre.apply(image, label.with_array(label.array + 0.5))
    with pytest.raises(SegCoreError, match="channel 3, but the image has 1"):
        Preprocessing([{"name": "crop_foreground", "channel": 3}]).apply(image)
    with pytest.raises(SegCoreError, match="lies outside the image"):
        Preprocessing([{"name": "crop_box", "start_zyx": [12, 0, 0], "stop_zyx": [14, 3, 3]}]).apply(image)
    out = pre.apply(image, label)
    with pytest.raises(SegCoreError, match=r"has the size \(12, 20, 18\)"):
        pre.invert_label(label.array, out.record)
    with pytest.raises(SegCoreError, match="other steps or parameters"):
        Preprocessing([{"name": "pad", "multiple_zyx": [4, 8, 8]}]).invert_label(out.label, out.record)


def test_outputs_never_share_memory_with_the_inputs(rng):
    image, label = case(np.eye(3), rng, channels=1)
    before_image, before_label = image.array.copy(), label.array.copy()
    for steps in ([], [{"name": "reorient"}], [{"name": "crop_box", "start_zyx": [0, 0, 0], "stop_zyx": [99, 99, 99]}]):
        out = Preprocessing(steps).apply(image, label)
        out.image[...] = 1
        out.label[...] = 9
    assert np.array_equal(image.array, before_image) and np.array_equal(label.array, before_label)


def test_output_grid_without_voxels_is_the_grid_apply_gives(direction, rng):
    image, label = case(direction, rng, channels=1)
    pre = Preprocessing([{"name": "reorient"}, {"name": "resample", "spacing_xyz_mm": [0.55, None, 5.3]},
                         {"name": "crop_box", "start_zyx": [1, 2, 3], "stop_zyx": [99, 18, 99]},
                         {"name": "pad", "multiple_zyx": [4, 16, 8], "min_zyx": [1, 1, 40]}, {"name": "zscore"}])
    planned = pre.output_grid(image.grid)
    assert planned.mismatch(pre.apply(image, label).grid) is None
    assert Preprocessing([{"name": "crop_foreground"}]).output_grid(image.grid) is None


def test_an_owned_image_is_padded_slab_by_slab_as_np_pad_and_its_source_handed_back(rng, monkeypatch):
    from SegCore.transforms import geometry

    monkeypatch.setattr(geometry, "PAD_SLAB", 4)  # 21 slices: 6 slabs, the last one short
    data = rng.normal(size=(2, 21, 40, 36)).astype(np.float32) + 3.0  # never 0: a handed-back page reads 0
    label = (rng.random((21, 40, 36)) > 0.5).astype(np.uint8)
    pad = {"name": "pad", "multiple_zyx": [16, 16, 16], "value": -1.5}
    widths = [(5, 6), (4, 4), (6, 6)]  # 21 -> 32, 40 -> 48, 36 -> 48, centred with the odd voxel after
    expected = np.pad(data, [(0, 0), *widths], constant_values=-1.5)
    image = Volume.create(data.copy())
    kept = Preprocessing([pad]).apply(image, Volume.create(label))  # the caller's float32: copied, not consumed
    np.testing.assert_array_equal(kept.image, expected)
    np.testing.assert_array_equal(kept.label, np.pad(label, widths))
    np.testing.assert_array_equal(image.array, data)
    own = data.copy()
    given = Preprocessing([pad]).apply(Volume.create(own), overwrite=True)  # given away: consumed as it is copied
    np.testing.assert_array_equal(given.image, expected)
    if sys.platform.startswith("linux"):
        assert (own == 0).mean() > 0.9  # all but the pages shared with the allocation's edges went back
    edge = {**pad, "mode": "edge"}
    own = data.copy()
    np.testing.assert_array_equal(Preprocessing([edge]).apply(Volume.create(own), overwrite=True).image,
                                  np.pad(data, [(0, 0), *widths], mode="edge"))
    np.testing.assert_array_equal(own, data)  # edge padding reads the edges last: the plain path
