"""One resampling of a patch: output patch voxels -> (flip + affine + elastic) -> input voxels, read from a crop.

A patch of size P (z, y, x) is laid on the volume at the integer start `round(centre - (P - 1) / 2)`, so that with
no transform it is exactly `volume[start:start + P]`. Transforms act about the patch's centre point c = start +
(P - 1) / 2: an output voxel o (patch index) samples the input at

    x = c + t + M @ (o - (P - 1) / 2) + d(o)

with M = rotation @ scale @ flip (3x3, axes z, y, x), t a translation and d a smooth displacement field (voxels).
Only the bounding box of all x (plus the interpolation support) is read from the volume, so a memory-mapped volume
is read in that region only. Outside the volume the image takes the pad value and the label 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def rotation_matrix(angles_rad_zyx) -> np.ndarray:
    """3x3 matrix (z, y, x) of rotations about axis z, then y, then x by the given angles (radians).

    Each single rotation samples the input as `scipy.ndimage.rotate(volume, degrees, axes=...)` does, with the axes
    of its plane: about z -> axes (1, 2), about y -> axes (0, 2), about x -> axes (0, 1).
    """
    matrix = np.eye(3)
    for axis, angle in enumerate(angles_rad_zyx):
        if angle == 0:
            continue
        a, b = [k for k in range(3) if k != axis]
        c, s = math.cos(angle), math.sin(angle)
        single = np.eye(3)
        single[a, a], single[a, b], single[b, a], single[b, b] = c, s, -s, c
        matrix = matrix @ single
    return matrix


def _bspline3(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel (support (-2, 2), sums to 1 over integer shifts)."""
    t = np.abs(t)
    return np.where(t < 1, (4 - 6 * t ** 2 + 3 * t ** 3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def bspline_weights(size: int, spacing: float) -> np.ndarray:
    """(size, K) weights that upsample K control values, spaced `spacing` voxels apart, to `size` voxels smoothly.

    Rows sum to 1 (partition of unity), so the upsampled field never exceeds the largest control value.
    """
    if size == 1:
        return np.ones((1, 1))
    count = int(math.floor((size - 1) / spacing)) + 4
    knots = (np.arange(count) - 1) * spacing
    return _bspline3((np.arange(size)[:, None] - knots[None, :]) / spacing)


def elastic_field(patch_zyx, sigma_vox: float, magnitude_vox: float, rng: np.random.Generator) -> np.ndarray:
    """(3, Z, Y, X) float64 smooth random displacement (voxels): control values uniform in [-magnitude, magnitude]
    on a coarse grid `sigma_vox` apart, upsampled separably with cubic B-splines (three small matrix products per
    component instead of a Gaussian filter of a full-size noise volume). Axes of size 1 (2D patches) get none."""
    weights = [bspline_weights(size, sigma_vox) for size in patch_zyx]
    counts = [w.shape[1] for w in weights]
    field = np.zeros((3, *patch_zyx))
    for axis in range(3):
        control = rng.uniform(-magnitude_vox, magnitude_vox, size=counts)
        if patch_zyx[axis] == 1:
            continue  # no displacement across the slice of a 2D patch; the draw keeps the stream the same
        upsampled = control @ weights[2].T  # (Kz, Ky, X)
        upsampled = np.matmul(weights[1][None], upsampled)  # (Kz, Y, X)
        field[axis] = np.tensordot(weights[0], upsampled, axes=(1, 0))  # (Z, Y, X)
    return field


def sample_coordinates(start_zyx, patch_zyx, matrix: np.ndarray, translation_zyx, field: np.ndarray | None
                       ) -> np.ndarray:
    """(3, Z, Y, X) float64 input coordinates of every output voxel (see the module docstring)."""
    half = [(size - 1) / 2 for size in patch_zyx]
    offsets = [np.arange(size) - h for size, h in zip(patch_zyx, half, strict=True)]
    coordinates = np.empty((3, *patch_zyx)) if field is None else field
    for axis in range(3):
        base = start_zyx[axis] + half[axis] + translation_zyx[axis]
        zy = (base + matrix[axis, 0] * offsets[0])[:, None, None] + (matrix[axis, 1] * offsets[1])[None, :, None]
        x = (matrix[axis, 2] * offsets[2])[None, None, :]
        if field is None:
            np.add(zy, x, out=coordinates[axis])
        else:
            coordinates[axis] += zy
            coordinates[axis] += x
    return coordinates


def read_region(array: np.ndarray, box_start, box_stop) -> np.ndarray:
    """array[..., box] as a contiguous copy, with the box clipped to the array; reads only that region of a memmap."""
    spatial = array.shape[-3:]
    clipped = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(box_start, box_stop, spatial, strict=True))
    return np.ascontiguousarray(array[(..., *clipped)])


def needed_box(coordinates: np.ndarray, spatial_zyx, margin: int):
    """Integer [start, stop) per axis covering every coordinate plus `margin` voxels of interpolation support,
    clipped to the volume (an empty box where the patch lies wholly outside)."""
    starts, stops = [], []
    for axis in range(3):
        low, high = float(coordinates[axis].min()), float(coordinates[axis].max())
        start = max(0, int(math.floor(low)) - margin)
        stop = min(spatial_zyx[axis], int(math.floor(high)) + 1 + margin)
        starts.append(start)
        stops.append(max(start, stop))
    return starts, stops


class Lookup:
    """Trilinear and nearest lookups of crops at fixed coordinates, sharing the index arithmetic of a patch.

    Coordinates (3, *patch) are local to a crop of shape `crop_zyx`. Each crop is padded (1 voxel before, 2 after)
    with the pad value and coordinates are clipped into that border, so that every corner exists and a sample
    point beyond the volume blends with the pad value exactly as `map_coordinates(mode="grid-constant")` does.
    A trilinear lookup gathers the voxel pairs along x as one complex64 each: four gathers instead of eight,
    about 1.7x faster than `scipy.ndimage.map_coordinates(order=1)` on the same points.
    """

    def __init__(self, coordinates: np.ndarray, crop_zyx):
        self.crop_zyx = tuple(int(n) for n in crop_zyx)
        self.padded_zyx = tuple(n + 3 for n in self.crop_zyx)
        self.strides = (self.padded_zyx[1] * self.padded_zyx[2], self.padded_zyx[2], 1)
        self.fractions = []
        shifted = np.empty(coordinates.shape[1:])
        for axis, size in enumerate(self.crop_zyx):
            np.clip(coordinates[axis], -1, size, out=shifted)
            shifted += 1  # >= 0, so truncation is the floor
            base = shifted.astype(np.intp)
            shifted -= base
            self.fractions.append(shifted.astype(np.float32))
            base *= self.strides[axis]
            if axis == 0:
                self.flat = base
            else:
                self.flat += base

    def _padded(self, crop: np.ndarray, pad_value, dtype) -> np.ndarray:
        padded = np.full(self.padded_zyx, pad_value, dtype=dtype)
        padded[1:-2, 1:-2, 1:-2] = crop
        return padded

    def linear(self, crop: np.ndarray, pad_value: float) -> np.ndarray:
        """(*patch) float32 trilinear interpolation of the (Z, Y, X) crop."""
        padded = self._padded(crop, pad_value, np.float32)
        pairs = np.empty((*self.padded_zyx, 2), dtype=np.float32)
        pairs[..., 0] = padded
        pairs[..., :-1, 1] = padded[..., 1:]
        pairs[..., -1, 1] = pad_value
        values = pairs.view(np.complex64).reshape(-1)
        fz, fy, fx = self.fractions

        def along_x(offset: int) -> np.ndarray:
            pair = np.take(values[offset:], self.flat)  # an offset view, so no shifted index array is built
            low = pair.real
            return low + fx * (pair.imag - low)

        sz, sy = self.strides[0], self.strides[1]
        near, far = along_x(0), along_x(sy)
        near += fy * (far - near)
        back, far = along_x(sz), along_x(sz + sy)
        back += fy * (far - back)
        near += fz * (back - near)
        return near

    def nearest(self, crop: np.ndarray, pad_value=0) -> np.ndarray:
        """(*patch) crop at the nearest voxel (halves round up), in the crop's dtype."""
        index = self.flat.copy()
        for fraction, stride in zip(self.fractions, self.strides, strict=True):
            index += (fraction >= 0.5) * stride
        return np.take(self._padded(crop, pad_value, crop.dtype).reshape(-1), index)


def resample_patch(image_czyx: np.ndarray, label_zyx: np.ndarray | None, coordinates: np.ndarray, *,
                   image_order: int, label_mode: str, pad_value: float):
    """Interpolate every image channel (float32) and the label at `coordinates` (3, *patch; shifted in place),
    once each.

    Only the needed box of the inputs is read. Images: nearest (order 0), trilinear (1) or cubic spline (3, with
    scipy's map_coordinates). The label is nearest or, with "one_hot_linear", the value whose one-hot
    interpolates highest (ties go to the lower value).
    """
    patch = coordinates.shape[1:]
    starts, stops = needed_box(coordinates, image_czyx.shape[-3:], margin=1 if image_order <= 1 else 3)
    local = coordinates  # shifted in place to the crop's frame
    local -= np.asarray(starts, dtype=float).reshape(3, 1, 1, 1)
    image_crop = read_region(image_czyx, starts, stops).astype(np.float32, copy=False)
    lookup = Lookup(local, image_crop.shape[1:])
    image = np.empty((image_czyx.shape[0], *patch), dtype=np.float32)
    for channel in range(image.shape[0]):
        if image_order == 1:
            image[channel] = lookup.linear(image_crop[channel], pad_value)
        elif image_order == 0:
            image[channel] = lookup.nearest(image_crop[channel], pad_value)
        else:  # values beyond the volume are the pad value and take part, as if the volume had been padded
            ndimage.map_coordinates(image_crop[channel], local, output=image[channel], order=3,
                                    mode="grid-constant", cval=pad_value)
    if label_zyx is None:
        return image, None
    label_crop = read_region(label_zyx, starts, stops)
    if label_mode == "nearest":
        return image, lookup.nearest(label_crop)
    label = np.zeros(patch, dtype=label_zyx.dtype)
    best = np.full(patch, -1.0, dtype=np.float32)
    for value in np.union1d(np.unique(label_crop), [0]).astype(label_zyx.dtype):  # lowest first: ties stay low
        score = lookup.linear((label_crop == value).astype(np.float32), 1.0 if value == 0 else 0.0)
        better = score > best
        label[better] = value
        best[better] = score[better]
    return image, label


def crop_patch(array: np.ndarray, start_zyx, patch_zyx, pad_value: float) -> np.ndarray:
    """array[..., start:start + patch] exactly (no interpolation), padded with `pad_value` outside the volume."""
    stop = [s + p for s, p in zip(start_zyx, patch_zyx, strict=True)]
    region = read_region(array, start_zyx, stop)
    out = np.full((*array.shape[:-3], *patch_zyx), pad_value, dtype=array.dtype)
    spatial = array.shape[-3:]
    target = tuple(slice(max(0, -s), max(0, -s) + max(0, min(n, e) - max(0, s)))
                   for s, e, n in zip(start_zyx, stop, spatial, strict=True))
    out[(..., *target)] = region
    return out
