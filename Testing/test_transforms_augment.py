"""Augmentation (SegCore/transforms/augment.py, spatial.py): image and label stay aligned through every spatial
part; flips, rotations, scaling and translations match independent oracles (np.flip, scipy.ndimage.rotate /
affine_transform of the whole volume, then cropped); probabilities, seeds, borders and memory-mapped input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SegCore.errors import SegCoreError
from SegCore.transforms import Augmentation
from SegCore.transforms.augment import PROBABILITIES
from SegCore.transforms.spatial import Lookup, bspline_weights, elastic_field

OFF = {key: 0.0 for key in PROBABILITIES}
SPATIAL_ALL = {**OFF, "flip_p": 0.5, "rotate_deg": [10, 5, 5], "rotate_p": 1, "scale": [0.8, 1.2], "scale_p": 1,
               "translate_vox": [4, 4, 4], "translate_p": 1, "elastic_sigma_vox": 8, "elastic_magnitude_vox": 3,
               "elastic_p": 1}


def encoded_pair(rng: np.random.Generator, shape=(40, 56, 64)):
    """A label of a few ellipsoids (values 0, 1, 2) and an image that encodes it exactly: label * 100 plus a smooth
    background in [0, 10], so thresholds at 50 and 150 read the label back from the image."""
    z, y, x = np.indices(shape)
    label = np.zeros(shape, dtype=np.uint8)
    for value, centre, radii in [(1, (20, 28, 30), (12, 16, 20)), (2, (18, 24, 38), (6, 8, 9)),
                                 (1, (30, 40, 15), (5, 6, 6))]:
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radii, strict=True)) <= 1
        label[inside] = value
    background = ndimage.gaussian_filter(rng.random(shape), 3)
    background = 10 * (background - background.min()) / np.ptp(background)
    image = (label * 100.0 + background).astype(np.float32)[None]
    return image, label


def read_label(image_patch: np.ndarray) -> np.ndarray:
    return (image_patch[0] > 50).astype(np.uint8) + (image_patch[0] > 150)


def smooth_volume(rng, shape=(41, 51, 61)):
    return ndimage.gaussian_filter(rng.standard_normal(shape), 2).astype(np.float32)


@pytest.mark.parametrize("spec", [
    {**OFF, "flip_p": 1}, {**OFF, "rotate_deg": [25, 0, 0], "rotate_p": 1},
    {**OFF, "rotate_deg": [5, 20, 10], "rotate_p": 1}, {**OFF, "scale": [0.7, 1.4], "scale_p": 1},
    {**OFF, "translate_vox": [5, 5, 5], "translate_p": 1},
    {**OFF, "elastic_sigma_vox": 6, "elastic_magnitude_vox": 4, "elastic_p": 1}, SPATIAL_ALL,
], ids=["flip", "rotate_depth", "rotate_3d", "scale", "translate", "elastic", "all"])
@pytest.mark.parametrize("label_mode", ["nearest", "one_hot_linear"])
def test_every_spatial_part_keeps_image_and_label_aligned(spec, label_mode):
    image, label = encoded_pair(np.random.default_rng(0))
    aug = Augmentation({**spec, "label_mode": label_mode})
    for seed in range(4):
        rng = np.random.default_rng(seed)
        image_patch, label_patch = aug.sample_patch(image, label, (20.0, 28.0, 31.0), (32, 40, 48), rng)
        assert image_patch.shape == (1, 32, 40, 48) and image_patch.dtype == np.float32
        assert label_patch.shape == (32, 40, 48) and label_patch.dtype == np.uint8
        assert set(np.unique(label_patch)) <= {0, 1, 2}
        assert (label_patch == 1).sum() > 1000 and (label_patch == 2).sum() > 100  # the patch holds both labels
        disagree = read_label(image_patch) != label_patch
        # interpolated intensities and nearest labels differ only on a label's edge: every disagreement lies
        # within one voxel of a label change (a shift of the label by 2 voxels would break this)
        edge = ndimage.maximum_filter(label_patch, 3) != ndimage.minimum_filter(label_patch, 3)
        assert not np.any(disagree & ~edge) and disagree.mean() < 0.03, (seed, disagree.mean())


def test_one_hot_linear_keeps_label_values_and_dtype():
    rng = np.random.default_rng(3)
    image, label = encoded_pair(rng)
    values = np.array([0, 300, 7000], dtype=np.uint16)[label]
    aug = Augmentation({**SPATIAL_ALL, "label_mode": "one_hot_linear"})
    _, patch = aug.sample_patch(image, values, (20, 28, 31), (32, 40, 48), rng)
    assert patch.dtype == np.uint16 and set(np.unique(patch)) == {0, 300, 7000}


def test_identity_spec_returns_exactly_the_crop():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((2, 30, 40, 50)).astype(np.float32)
    label = rng.integers(0, 5, (30, 40, 50)).astype(np.uint16)
    # the patch starts at round(centre - (size - 1) / 2): (12.2 - 4.5) -> 8, (20 - 7) -> 13, (24.6 - 9.5) -> 15
    image_patch, label_patch = Augmentation.off().sample_patch(image, label, (12.2, 20, 24.6), (10, 15, 20), rng)
    assert np.array_equal(image_patch, image[:, 8:18, 13:28, 15:35])
    assert np.array_equal(label_patch, label[8:18, 13:28, 15:35]) and label_patch.dtype == np.uint16
    # the interpolating path with an identity map (a rotation by exactly 0 degrees) gives the same crop
    zero_rotation = Augmentation({**OFF, "rotate_deg": [0, 0, 0], "rotate_p": 1})
    again, again_label = zero_rotation.sample_patch(image, label, (12.2, 20, 24.6), (10, 15, 20), rng)
    assert np.array_equal(again, image_patch) and np.array_equal(again_label, label_patch)


@pytest.mark.parametrize("spec", [OFF, {**OFF, "rotate_deg": [0, 0, 0], "rotate_p": 1}], ids=["crop", "resampled"])
def test_patches_at_the_border_are_padded_with_the_pad_value_and_label_0(spec):
    rng = np.random.default_rng(2)
    image = rng.random((1, 20, 30, 40)).astype(np.float32) + 1
    label = rng.integers(1, 4, (20, 30, 40)).astype(np.uint8)
    aug = Augmentation({**spec, "pad_value": -5})
    image_patch, label_patch = aug.sample_patch(image, label, (1.5, 28.5, -3.5), (8, 10, 12), rng)
    # oracle: pad the whole volume, then crop; starts are (-2, 24, -9)
    padded = np.pad(image, ((0, 0), (2, 2), (0, 4), (9, 0)), constant_values=-5)
    padded_label = np.pad(label, ((2, 2), (0, 4), (9, 0)))
    assert np.array_equal(image_patch, padded[:, 0:8, 24:34, 0:12])
    assert np.array_equal(label_patch, padded_label[0:8, 24:34, 0:12])
    outside, _ = aug.sample_patch(image, label, (100, 100, 100), (4, 4, 4), rng)
    assert np.all(outside == -5)


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("resampled", [False, True])
def test_flips_match_np_flip_of_the_crop(axes, resampled):
    rng = np.random.default_rng(4)
    image = rng.standard_normal((1, 20, 30, 40)).astype(np.float32)
    label = rng.integers(0, 3, (20, 30, 40)).astype(np.uint8)
    spec = {**OFF, "flip_axes": list(axes), "flip_p": 1}
    if resampled:  # through map_coordinates: the flip is part of the combined matrix
        spec.update(rotate_deg=[0, 0, 0], rotate_p=1)
    image_patch, label_patch = Augmentation(spec).sample_patch(image, label, (9.5, 14.5, 19.5), (12, 16, 20), rng)
    crop = image[:, 4:16, 7:23, 10:30]  # starts: centre - (size - 1) / 2
    assert np.array_equal(image_patch, np.flip(crop, axis=tuple(a + 1 for a in axes)))
    assert np.array_equal(label_patch, np.flip(label[4:16, 7:23, 10:30], axis=axes))


@pytest.mark.parametrize("axis, plane", [(0, (1, 2)), (1, (0, 2)), (2, (0, 1))])
def test_rotations_match_scipy_rotate_of_the_whole_volume(axis, plane):
    rng = np.random.default_rng(5)
    volume = smooth_volume(rng)
    label = (volume > 0.02).astype(np.uint8)
    angles = [0.0, 0.0, 0.0]
    angles[axis] = [17.0, 17.0]
    aug = Augmentation({**OFF, "rotate_deg": angles, "rotate_p": 1})
    centre = [(s - 1) / 2 for s in volume.shape]  # scipy rotates about the volume's centre
    patch, label_patch = aug.sample_patch(volume[None], label, centre, (31, 41, 51), rng)
    inner = (slice(5, 36), slice(5, 46), slice(5, 56))
    expected = ndimage.rotate(volume, 17.0, axes=plane, reshape=False, order=1, mode="grid-constant")[inner]
    expected_label = ndimage.rotate(label, 17.0, axes=plane, reshape=False, order=0, mode="grid-constant")[inner]
    assert np.allclose(patch[0], expected, atol=1e-6)
    assert np.mean(label_patch == expected_label) > 0.9999  # a tie at exactly .5 may round either way


def test_large_in_plane_rotation_of_a_2d_slice_never_mixes_slices():
    rng = np.random.default_rng(6)
    volume = smooth_volume(rng, (9, 64, 64))
    aug = Augmentation({**OFF, "rotate_deg": [[-180, 180], 0, 0], "rotate_p": 1, "elastic_p": 1,
                        "elastic_sigma_vox": 8, "elastic_magnitude_vox": 5, "scale_p": 1})
    patch, _ = aug.sample_patch(volume[None], None, (4, 31.5, 31.5), (1, 64, 64), np.random.default_rng(7))
    alone = np.zeros_like(volume)
    alone[4] = volume[4]  # the same slice with every other slice zeroed gives the same 2D patch
    same, _ = aug.sample_patch(alone[None], None, (4, 31.5, 31.5), (1, 64, 64), np.random.default_rng(7))
    assert np.array_equal(patch, same) and np.abs(patch).max() > 0
    quarter = Augmentation({**OFF, "rotate_deg": [[90, 90], 0, 0], "rotate_p": 1})
    turned, _ = quarter.sample_patch(volume[None], None, (4, 31.5, 31.5), (1, 64, 64), rng)
    assert np.allclose(turned[0, 0], ndimage.rotate(volume[4], 90, reshape=False, order=1), atol=1e-6)


def test_scaling_matches_scipy_affine_transform():
    rng = np.random.default_rng(8)
    volume = smooth_volume(rng)
    aug = Augmentation({**OFF, "scale": [2.0, 2.0], "scale_p": 1})  # scale 2 magnifies: half the region
    patch, _ = aug.sample_patch(volume[None], None, (19.5, 24.5, 29.5), (20, 24, 30), rng)
    start = np.array([10, 13, 15])  # centre - (size - 1) / 2
    half = (np.array([20, 24, 30]) - 1) / 2
    expected = ndimage.affine_transform(volume, np.eye(3) / 2, offset=start + half - half / 2,
                                        output_shape=(20, 24, 30), order=1)
    assert np.allclose(patch[0], expected, atol=1e-6)


def test_integer_translation_moves_the_crop():
    rng = np.random.default_rng(9)
    image = rng.standard_normal((1, 20, 30, 40)).astype(np.float32)
    aug = Augmentation({**OFF, "translate_vox": [[3, 3], [-2, -2], [5, 5]], "translate_p": 1})
    patch, _ = aug.sample_patch(image, None, (9.5, 14.5, 19.5), (8, 10, 12), rng)  # starts 6, 10, 14
    assert np.allclose(patch, image[:, 6 + 3:14 + 3, 10 - 2:20 - 2, 14 + 5:26 + 5], atol=1e-6)


def test_elastic_field_is_smooth_and_bounded_by_its_magnitude():
    weights = bspline_weights(50, 7.0)
    assert np.allclose(weights.sum(axis=1), 1) and np.all(weights >= 0)
    field = elastic_field((30, 40, 50), 8.0, 3.0, np.random.default_rng(10))
    assert field.shape == (3, 30, 40, 50) and np.abs(field).max() <= 3.0 and np.abs(field).max() > 0.5
    assert np.abs(np.diff(field, axis=3)).max() < 3.0 * 4 / 8  # slope at most magnitude * |B3'| sum / sigma
    flat = elastic_field((1, 40, 50), 8.0, 3.0, np.random.default_rng(10))
    assert np.all(flat[0] == 0)  # no displacement across the slice of a 2D patch


def test_intensity_parts_match_hand_computed_values():
    rng = np.random.default_rng(11)
    image = (rng.random((2, 10, 12, 14)) * 4 + 1).astype(np.float32)
    crop = image[:, 2:8, 3:9, 4:10].astype(np.float64)
    centre, size = (4.5, 5.5, 6.5), (6, 6, 6)

    def patch(**spec):
        return Augmentation({**OFF, **spec}).sample_patch(image, None, centre, size, rng)[0]

    assert np.allclose(patch(brightness=[1.5, 1.5], brightness_p=1), crop * 1.5, rtol=1e-6)
    for channel, out in zip(crop, patch(contrast=[0.5, 0.5], contrast_p=1), strict=True):
        assert np.allclose(out, np.clip((channel - channel.mean()) * 0.5 + channel.mean(), channel.min(),
                                        channel.max()), rtol=1e-5)
    for channel, out in zip(crop, patch(gamma=[2.0, 2.0], gamma_p=1), strict=True):
        low, high = channel.min(), channel.max()
        assert np.allclose(out, ((channel - low) / (high - low)) ** 2 * (high - low) + low, rtol=1e-5)
    noise = patch(noise_std=[0.3, 0.3], noise_p=1) - crop
    assert abs(noise.std() - 0.3) < 0.03 and abs(noise.mean()) < 0.03


def test_probability_0_never_applies_and_1_always_applies():
    never, always = Augmentation.off(), Augmentation({key: 1.0 for key in PROBABILITIES})
    for seed in range(100):
        rng = np.random.default_rng(seed)
        drawn = never.draw(rng)
        assert drawn.flips == (False, False, False) and not drawn.interpolates
        assert (drawn.noise_std, drawn.brightness, drawn.contrast, drawn.gamma) == (None, None, None, None)
        drawn = always.draw(rng)
        assert drawn.flips == (True, True, True) and drawn.elastic
        assert None not in (drawn.angles_deg, drawn.scale, drawn.translation_vox, drawn.noise_std,
                            drawn.brightness, drawn.contrast, drawn.gamma)
    half = Augmentation({**OFF, "flip_p": 0.5})
    flips = [half.draw(np.random.default_rng(seed)).flips[0] for seed in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_the_same_seed_gives_the_same_patch():
    image, label = encoded_pair(np.random.default_rng(12))
    aug = Augmentation({**SPATIAL_ALL, "noise_p": 1, "gamma_p": 1, "contrast_p": 1, "brightness_p": 1})
    first = aug.sample_patch(image, label, (20, 28, 31), (16, 24, 32), np.random.default_rng(42))
    second = aug.sample_patch(image, label, (20, 28, 31), (16, 24, 32), np.random.default_rng(42))
    other = aug.sample_patch(image, label, (20, 28, 31), (16, 24, 32), np.random.default_rng(43))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


class RecordingArray(np.ndarray):
    """An ndarray view that counts the elements every indexing returns (what a memmap would read)."""

    read = 0

    def __getitem__(self, key):
        out = super().__getitem__(key)
        RecordingArray.read += np.size(out)
        return out


def test_a_memory_mapped_volume_is_read_only_where_the_patch_lies(tmp_path):
    image, label = encoded_pair(np.random.default_rng(13), shape=(40, 120, 120))
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "label.npy", label)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    mapped_label = np.load(tmp_path / "label.npy", mmap_mode="r")
    aug = Augmentation({**SPATIAL_ALL, "noise_p": 1})
    args = ((20, 28, 31), (16, 24, 32))
    from_disk = aug.sample_patch(mapped, mapped_label, *args, np.random.default_rng(5))
    in_memory = aug.sample_patch(np.array(image), np.array(label), *args, np.random.default_rng(5))
    assert np.array_equal(from_disk[0], in_memory[0]) and np.array_equal(from_disk[1], in_memory[1])
    RecordingArray.read = 0
    aug.sample_patch(mapped.view(RecordingArray), None, *args, np.random.default_rng(5))
    assert 0 < RecordingArray.read < 0.1 * image.size


@pytest.mark.parametrize("spec, words", [
    ({"flip_prob": 0.5}, "unknown augmentation setting(s) flip_prob"),
    ({"rotate_p": 1.5}, "rotate_p must be a number >= 0 <= 1"),
    ({"scale": [1.2, 0.8]}, "scale must be a number or a list [low, high], low <= high"),
    ({"rotate_deg": [3, 0]}, "rotate_deg must be a list of three (z, y, x) entries"),
    ({"label_mode": "linear"}, "label_mode must be one of 'nearest', 'one_hot_linear'"),
    ({"flip_axes": [3]}, "flip_axes must be a list of distinct spatial axes"),
])
def test_bad_settings_are_refused_with_the_setting_named(spec, words):
    with pytest.raises(SegCoreError) as error:
        Augmentation(spec)
    assert words in str(error.value)


def test_spec_is_complete_json_and_round_trips():
    import json

    aug = Augmentation({"rotate_deg": [3, 0, [1, 2]], "noise_std": 0.05, "translate_vox": [5, 5, 5]})
    spec = json.loads(json.dumps(aug.spec))
    assert spec["rotate_deg"] == [[-3.0, 3.0], [0.0, 0.0], [1.0, 2.0]] and spec["noise_std"] == [0.05, 0.05]
    assert spec["translate_vox"] == [[-5.0, 5.0]] * 3 and Augmentation(spec).spec == spec
    with pytest.raises(SegCoreError, match=r"\(C, Z, Y, X\)"):
        aug.sample_patch(np.zeros((4, 4, 4), np.float32), None, (2, 2, 2), (2, 2, 2), np.random.default_rng(0))


def test_trilinear_and_nearest_lookups_match_scipy_map_coordinates():
    rng = np.random.default_rng(14)
    crop = rng.standard_normal((9, 11, 13)).astype(np.float32)
    # points inside, on the edges and up to 3 voxels beyond every face
    points = np.stack([rng.uniform(-3, n + 2, size=(7, 8, 9)) for n in crop.shape])
    lookup = Lookup(points, crop.shape)
    expected = ndimage.map_coordinates(crop, points, order=1, mode="grid-constant", cval=-2.0)
    assert np.allclose(lookup.linear(crop, -2.0), expected, atol=1e-5)
    labels = rng.integers(1, 9, crop.shape).astype(np.uint8)
    expected = ndimage.map_coordinates(labels, points, order=0, mode="grid-constant", cval=0)
    assert np.array_equal(lookup.nearest(labels), expected)


def test_cubic_image_interpolation_follows_scipy_rotate():
    rng = np.random.default_rng(15)
    volume = smooth_volume(rng)
    aug = Augmentation({**OFF, "rotate_deg": [[17, 17], 0, 0], "rotate_p": 1, "image_order": 3})
    patch, _ = aug.sample_patch(volume[None], None, (20, 25, 30), (31, 41, 51), rng)
    expected = ndimage.rotate(volume, 17.0, axes=(1, 2), reshape=False, order=3, mode="grid-constant")
    inner = (slice(5, 36), slice(5, 46), slice(5, 56))
    # the spline is fitted on the crop, not the whole volume: equal up to a small edge effect
    assert np.abs(patch[0] - expected[inner]).max() < 0.02 * np.abs(expected).max()
