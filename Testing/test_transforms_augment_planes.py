"""The fast paths of augmentation (SegCore/transforms/planes.py, augment.py) against independent oracles: plane
lookups vs scipy's map_coordinates, an in-plane rotation and a scaling of a 2.5D stack vs scipy per slice, gamma vs
numpy's float64 power, Box-Muller noise vs the normal distribution (scipy.stats), and `out=` vs a fresh patch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, stats

from SegCore.transforms import Augmentation
from SegCore.transforms.augment import PROBABILITIES, normal_float32
from SegCore.transforms.planes import PlaneLookup, keeps_slices, plane_coordinates
from SegCore.transforms.spatial import rotation_matrix, sample_coordinates

OFF = {key: 0.0 for key in PROBABILITIES}


def smooth_volume(rng, shape=(21, 51, 61)):
    return ndimage.gaussian_filter(rng.standard_normal(shape), 2).astype(np.float32)


def test_plane_lookup_matches_map_coordinates_inside_and_beyond_every_face():
    rng = np.random.default_rng(20)
    crop = rng.standard_normal((9, 11, 13)).astype(np.float32)
    z = rng.uniform(-3, 11, size=6)  # one depth per output slice, some beyond either end
    yx = np.stack([rng.uniform(-3, n + 2, size=(7, 8)) for n in crop.shape[1:]])
    points = np.stack([np.broadcast_to(z[:, None, None], (6, 7, 8)),
                       *(np.broadcast_to(c, (6, 7, 8)) for c in yx)])
    lookup = PlaneLookup(z, yx, crop.shape)
    expected = ndimage.map_coordinates(crop, points, order=1, mode="grid-constant", cval=-2.0)
    assert np.allclose(lookup.linear(crop, -2.0), expected, atol=2e-5)  # grid_sample's float32 positions
    channels = np.stack([crop, 2 * crop + 1])
    assert np.allclose(lookup.linear_channels(channels, -2.0)[1],
                       ndimage.map_coordinates(channels[1], points, order=1, mode="grid-constant", cval=-2.0),
                       atol=5e-5)
    labels = rng.integers(1, 9, crop.shape).astype(np.uint8)
    expected = ndimage.map_coordinates(labels, points, order=0, mode="grid-constant", cval=0)
    assert np.array_equal(lookup.nearest(labels), expected)


def test_plane_coordinates_are_the_full_coordinates():
    matrix = rotation_matrix([math.radians(23), 0, 0]) @ np.diag([-1 / 1.2, 1 / 1.2, -1 / 1.2])
    assert keeps_slices(matrix) and not keeps_slices(rotation_matrix([0.1, 0.2, 0]))
    z, yx = plane_coordinates((4, -3, 7), (3, 10, 12), matrix, (0.5, -1.25, 2.0))
    full = sample_coordinates((4, -3, 7), (3, 10, 12), matrix, (0.5, -1.25, 2.0), None)
    assert np.array_equal(full[0], np.broadcast_to(z[:, None, None], full.shape[1:]))
    assert np.array_equal(full[1:], np.broadcast_to(yx[:, None], full[1:].shape))


@pytest.mark.parametrize("k", [1, 3])
def test_in_plane_rotation_of_a_stack_matches_scipy_rotate_of_each_slice(k):
    rng = np.random.default_rng(21)
    volume = smooth_volume(rng)
    label = (volume > 0.02).astype(np.uint8)
    aug = Augmentation({**OFF, "rotate_deg": [[-31.0, -31.0], 0, 0], "rotate_p": 1})
    centre = (10, 25, 30)  # the slices' centre: scipy rotates each plane about its centre
    patch, label_patch = aug.sample_patch(volume[None], label, centre, (k, 41, 51), rng)
    inner = (slice(10 - k // 2, 10 + k // 2 + 1), slice(5, 46), slice(5, 56))
    expected = ndimage.rotate(volume, -31.0, axes=(1, 2), reshape=False, order=1, mode="grid-constant")[inner]
    expected_label = ndimage.rotate(label, -31.0, axes=(1, 2), reshape=False, order=0, mode="grid-constant")[inner]
    assert np.allclose(patch[0], expected, atol=2e-5)
    assert np.mean(label_patch == expected_label) > 0.9999  # a tie at exactly .5 may round either way


def test_scaling_a_stack_blends_neighbouring_slices_as_affine_transform_does():
    rng = np.random.default_rng(22)
    volume = smooth_volume(rng)
    for scale in (0.8, 1.25):  # depth offsets -1/scale, 0, 1/scale: between slices
        aug = Augmentation({**OFF, "scale": [scale, scale], "scale_p": 1, "flip_axes": [0, 2], "flip_p": 1})
        centre = np.array([10, 24.5, 29.5])  # a whole-voxel start: start + (size - 1) / 2
        patch, _ = aug.sample_patch(volume[None], None, centre, (3, 40, 48), rng)
        half = np.array([1, 19.5, 23.5])
        matrix = np.diag([-1, 1, -1]) / scale  # flips of z and x, then the scaling, about the patch centre
        expected = ndimage.affine_transform(volume, matrix, offset=centre - matrix @ half,
                                            output_shape=(3, 40, 48), order=1, mode="grid-constant")
        assert np.allclose(patch[0], expected, atol=2e-5)


@pytest.mark.parametrize("gamma", [0.7, 1.0, 1.37, 2.0])
def test_gamma_matches_float64_power_within_float32_tolerance(gamma):
    rng = np.random.default_rng(23)
    image = (rng.random((3, 4, 9, 11)) * 6 - 2).astype(np.float32)
    image[2] = 1.5  # a constant channel stays as it is
    aug = Augmentation({**OFF, "gamma": [gamma, gamma], "gamma_p": 1})
    patch, _ = aug.sample_patch(image, None, (1.5, 4, 5), (4, 9, 11), rng)
    for channel, out in zip(image.astype(np.float64), patch, strict=True):
        low, span = channel.min(), np.ptp(channel)
        expected = channel if span == 0 else np.power((channel - low) / span, gamma) * span + low
        assert np.allclose(out, expected, rtol=2e-6, atol=2e-6 * max(span, 1))
        assert out.min() == np.float32(low)  # the lowest value maps onto itself (log 0 -> exp(-inf) = 0)


def test_box_muller_noise_is_normal_with_the_standard_deviation_asked():
    rng = np.random.default_rng(24)
    std = 0.3
    noise = normal_float32(rng, (3, 101, 333), std)  # an odd count: the second half is one shorter
    assert noise.shape == (3, 101, 333) and noise.dtype == np.float32
    values = noise.ravel().astype(np.float64)
    n = values.size
    assert abs(values.mean()) < 5 * std / math.sqrt(n)
    assert abs(values.std() / std - 1) < 5 / math.sqrt(2 * n)
    assert abs(stats.kurtosis(values)) < 5 * math.sqrt(24 / n)  # normal: excess kurtosis 0
    assert stats.kstest(values / std, "norm").pvalue > 1e-3
    half = values[: (n + 1) // 2], values[(n + 1) // 2:]  # the cos and sin halves are uncorrelated
    assert abs(np.corrcoef(half[0][: half[1].size], half[1])[0, 1]) < 5 / math.sqrt(n / 2)
    assert np.abs(values).max() <= std * math.sqrt(48 * math.log(2)) * (1 + 1e-6)
    again = normal_float32(np.random.default_rng(24), (3, 101, 333), std)
    assert np.array_equal(noise, again)


def test_noise_through_augmentation_has_the_drawn_standard_deviation():
    image = np.full((2, 8, 64, 64), 3.0, dtype=np.float32)
    aug = Augmentation({**OFF, "noise_std": [0.2, 0.2], "noise_p": 1})
    patch, _ = aug.sample_patch(image, None, (3.5, 31.5, 31.5), (8, 64, 64), np.random.default_rng(25))
    added = (patch - 3.0).ravel()
    assert abs(added.std() / 0.2 - 1) < 0.02 and abs(added.mean()) < 0.005


@pytest.mark.parametrize("spec", [
    OFF, {**OFF, "flip_p": 1}, {**OFF, "rotate_p": 1, "gamma_p": 1}, {**OFF, "scale_p": 1, "noise_p": 1},
    {**OFF, "rotate_deg": [10, 10, 0], "rotate_p": 1, "contrast_p": 1}, {**OFF, "elastic_p": 1, "elastic_sigma_vox": 4},
], ids=["crop", "flips", "rotate_gamma", "scale_noise", "rotate_3d", "elastic"])
def test_out_receives_the_same_patch(spec):
    rng = np.random.default_rng(26)
    image = smooth_volume(rng, (9, 30, 34))[None].repeat(2, axis=0)
    label = (image[0] > 0).astype(np.uint8)
    aug = Augmentation(spec)
    fresh = aug.sample_patch(image, label, (4, 15, 16.5), (3, 20, 24), np.random.default_rng(7))
    slot = np.full((5, 2, 3, 20, 24), np.nan, dtype=np.float32)[1]  # a view into a batch
    given = aug.sample_patch(image, label, (4, 15, 16.5), (3, 20, 24), np.random.default_rng(7), out=slot)
    assert given[0] is slot and np.array_equal(slot, fresh[0]) and np.array_equal(given[1], fresh[1])
