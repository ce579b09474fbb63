"""The optimised patch paths (SegCore/transforms/spatial.py, planes.py, augment.py) against the previous
implementation, kept here as it was (per channel, the whole padded crop, trilinear in float64 coordinates, gamma
as float64-free `**`), driven by the same random draws (`Augmentation.draw`) and the same coordinates.

Bit for bit where the arithmetic is the same: crops, flips, the general lookup (rotations about y or x, elastic
deformation, cubic images), brightness and contrast, and nearest labels everywhere (the same float64 coordinates
and rounding). Within float32 tolerance where it changed on purpose: the plane lookup of a map that keeps depth
apart (rotation about z, scaling: `grid_sample` takes float32 positions) and gamma (float32 exp and log instead of
powf); one-hot-linear labels there agree but for near-ties. Noise is no longer drawn by `standard_normal`; its
distribution is tested in test_transforms_augment_planes.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from SegCore.transforms import Augmentation, spatial
from SegCore.transforms.augment import PROBABILITIES


class PreviousLookup:
    def __init__(self, coordinates, crop_zyx):
        self.crop_zyx = tuple(int(n) for n in crop_zyx)
        self.padded_zyx = tuple(n + 3 for n in self.crop_zyx)
        self.strides = (self.padded_zyx[1] * self.padded_zyx[2], self.padded_zyx[2], 1)
        self.fractions = []
        shifted = np.empty(coordinates.shape[1:])
        for axis, size in enumerate(self.crop_zyx):
            np.clip(coordinates[axis], -1, size, out=shifted)
            shifted += 1
            base = shifted.astype(np.intp)
            shifted -= base
            self.fractions.append(shifted.astype(np.float32))
            base *= self.strides[axis]
            self.flat = base if axis == 0 else self.flat + base

    def _padded(self, crop, pad_value, dtype):
        padded = np.full(self.padded_zyx, pad_value, dtype=dtype)
        padded[1:-2, 1:-2, 1:-2] = crop
        return padded

    def linear(self, crop, pad_value):
        padded = self._padded(crop, pad_value, np.float32)
        pairs = np.empty((*self.padded_zyx, 2), dtype=np.float32)
        pairs[..., 0] = padded
        pairs[..., :-1, 1] = padded[..., 1:]
        pairs[..., -1, 1] = pad_value
        values = pairs.view(np.complex64).reshape(-1)
        fz, fy, fx = self.fractions

        def along_x(offset):
            pair = np.take(values[offset:], self.flat)
            return pair.real + fx * (pair.imag - pair.real)

        sz, sy = self.strides[0], self.strides[1]
        near, far = along_x(0), along_x(sy)
        near += fy * (far - near)
        back, far = along_x(sz), along_x(sz + sy)
        back += fy * (far - back)
        near += fz * (back - near)
        return near

    def nearest(self, crop, pad_value=0):
        index = self.flat.copy()
        for fraction, stride in zip(self.fractions, self.strides, strict=True):
            index += (fraction >= 0.5) * stride
        return np.take(self._padded(crop, pad_value, crop.dtype).reshape(-1), index)


def previous_resample(image, label, coordinates, image_order, label_mode, pad_value):
    patch = coordinates.shape[1:]
    starts, stops = spatial.needed_box(coordinates, image.shape[-3:], margin=1 if image_order <= 1 else 3)
    local = coordinates - np.asarray(starts, dtype=float).reshape(3, 1, 1, 1)
    box = (..., *(slice(a, b) for a, b in zip(starts, stops, strict=True)))
    crop = np.ascontiguousarray(image[box]).astype(np.float32, copy=False)
    lookup = PreviousLookup(local, crop.shape[1:])
    out = np.empty((image.shape[0], *patch), dtype=np.float32)
    for c in range(out.shape[0]):
        if image_order == 1:
            out[c] = lookup.linear(crop[c], pad_value)
        elif image_order == 0:
            out[c] = lookup.nearest(crop[c], pad_value)
        else:
            ndimage.map_coordinates(crop[c], local, output=out[c], order=3, mode="grid-constant", cval=pad_value)
    label_crop = np.ascontiguousarray(label[box])
    if label_mode == "nearest":
        return out, lookup.nearest(label_crop)
    result, best = np.zeros(patch, dtype=label.dtype), np.full(patch, -1.0, dtype=np.float32)
    for value in np.union1d(np.unique(label_crop), [0]).astype(label.dtype):
        score = lookup.linear((label_crop == value).astype(np.float32), 1.0 if value == 0 else 0.0)
        better = score > best
        result[better] = value
        best[better] = score[better]
    return out, result


def previous_crop(array, start, patch, pad_value):
    out = np.full((*array.shape[:-3], *patch), pad_value, dtype=array.dtype)
    source, target = [], []
    for s, p, n in zip(start, patch, array.shape[-3:], strict=True):
        source.append(slice(max(0, s), max(max(0, s), min(n, s + p))))
        target.append(slice(source[-1].start - s, source[-1].stop - s))
    out[(..., *target)] = array[(..., *source)]
    return out


def previous_intensity(image, draw, rng):
    assert not draw.noise_std  # the noise's draws changed: compared by its distribution elsewhere
    if draw.brightness is not None:
        image *= np.float32(draw.brightness)
    for channel in image:
        if draw.contrast is not None:
            low, high, mean = channel.min(), channel.max(), channel.mean()
            channel -= mean
            channel *= np.float32(draw.contrast)
            channel += mean
            np.clip(channel, low, high, out=channel)
        if draw.gamma is not None:
            low, high = channel.min(), channel.max()
            if high > low:
                channel[...] = ((channel - low) / (high - low)) ** np.float32(draw.gamma) * (high - low) + low
    return image


def previous_sample_patch(aug, image, label, centre, patch, rng):
    s = aug.spec
    start = tuple(int(math.floor(c - (p - 1) / 2 + 0.5)) for c, p in zip(centre, patch, strict=True))
    draw = aug.draw(rng)
    if draw.interpolates:
        matrix = np.diag([-1.0 if flip else 1.0 for flip in draw.flips])
        if draw.scale is not None:
            matrix = np.diag([1 / draw.scale] * 3) @ matrix
        if draw.angles_deg is not None:
            matrix = spatial.rotation_matrix([math.radians(a) for a in draw.angles_deg]) @ matrix
        field = (spatial.elastic_field(patch, s["elastic_sigma_vox"], s["elastic_magnitude_vox"], rng)
                 if draw.elastic else None)
        coordinates = spatial.sample_coordinates(start, patch, matrix, draw.translation_vox or (0.0, 0.0, 0.0),
                                                 field)
        out, out_label = previous_resample(image, label, coordinates, s["image_order"], s["label_mode"],
                                           s["pad_value"])
    else:
        out = previous_crop(image, start, patch, s["pad_value"]).astype(np.float32, copy=False)
        out_label = previous_crop(label, start, patch, 0)
        flipped = tuple(axis for axis in range(3) if draw.flips[axis])
        if flipped:
            out = np.ascontiguousarray(np.flip(out, axis=tuple(a + 1 for a in flipped)))
            out_label = np.ascontiguousarray(np.flip(out_label, axis=flipped))
    return previous_intensity(out, draw, rng), out_label


EVERYTHING = {"flip_p": 0.5, "rotate_deg": [[-30, 30], [-8, 8], 5], "rotate_p": 0.5, "scale_p": 0.5,
              "translate_vox": [[-2, 3], 4, 4.5], "translate_p": 0.5, "elastic_sigma_vox": 6.0,
              "elastic_magnitude_vox": 2.0, "elastic_p": 0.3, "noise_p": 0.5, "brightness_p": 0.5,
              "contrast_p": 0.5, "gamma_p": 0.5}
IN_PLANE = {"rotate_deg": [[-90, 90], 0, 0], "rotate_p": 0.6, "scale_p": 0.4, "gamma": [2.0, 2.0], "gamma_p": 0.5}


@pytest.mark.parametrize("spec", [
    {}, EVERYTHING, IN_PLANE, {**EVERYTHING, "label_mode": "one_hot_linear"}, {**IN_PLANE, "image_order": 0},
    {**IN_PLANE, "image_order": 3, "pad_value": -1.5}, {key: 1.0 for key in PROBABILITIES},
    {**IN_PLANE, "label_mode": "one_hot_linear", "pad_value": 0.5},
], ids=["defaults", "everything", "in_plane", "one_hot", "nearest_image", "cubic", "all_on", "in_plane_one_hot"])
@pytest.mark.parametrize("patch", [(1, 20, 24), (3, 20, 24), (7, 12, 16)], ids=["slice", "stack", "patch"])
def test_patches_equal_the_previous_implementation(spec, patch, tmp_path):
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.standard_normal((2, 14, 30, 34)), (0, 1, 2, 2)).astype(np.float32)
    label = (ndimage.gaussian_filter(rng.random((14, 30, 34)), 2) * 12).astype(np.uint8) % 3
    np.save(tmp_path / "image.npy", image)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")  # as the case cache hands it over
    aug = Augmentation({**spec, "noise_p": 0.0})
    # inside, at every face, and partly beyond the volume (padding)
    centres = [(6.5, 14.5, 16.5), (0, 0, 0), (13, 29, 33), (-1, 15, 40), (7.2, 3.7, 30.1)]
    paths = set()
    for seed in range(12):
        centre = centres[seed % len(centres)]
        draw = aug.draw(np.random.default_rng(seed))  # the first draws of sample_patch
        planes = draw.interpolates and not draw.elastic and aug.spec["image_order"] <= 1 and (
            draw.angles_deg is None or draw.angles_deg[1:] == (0.0, 0.0))
        paths.add(planes)
        got = aug.sample_patch(mapped if seed % 2 else image, label, centre, patch, np.random.default_rng(seed))
        want = previous_sample_patch(aug, image, label, centre, patch, np.random.default_rng(seed))
        assert got[0].dtype == want[0].dtype == np.float32 and got[0].shape == want[0].shape
        assert got[1].dtype == label.dtype and got[1].shape == want[1].shape
        if planes or draw.gamma is not None:
            assert np.allclose(got[0], want[0], rtol=1e-5, atol=1e-5), f"image, seed {seed}"
        else:
            assert np.array_equal(got[0].view(np.uint32), want[0].view(np.uint32)), f"image, seed {seed}"
        if planes and aug.spec["label_mode"] == "one_hot_linear":
            assert np.mean(got[1] == want[1]) > 0.999, f"label, seed {seed}"
        else:
            assert np.array_equal(got[1], want[1]), f"label, seed {seed}"
    if spec.get("rotate_deg") == IN_PLANE["rotate_deg"] and aug.spec["image_order"] <= 1:
        assert True in paths  # the plane lookup was compared
