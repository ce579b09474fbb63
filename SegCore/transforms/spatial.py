"""One resampling of a patch: output patch voxels -> (flip + affine + elastic) -> input voxels, read from a crop.

A patch of size P (z, y, x) is laid on the volume at the integer start `round(centre - (P - 1) / 2)`, so that with
no transform it is exactly `volume[start:start + P]`. Transforms act about the patch's centre point c = start +
(P - 1) / 2: an output voxel o (patch index) samples the input at

    x = c + t + M @ (o - (P - 1) / 2) + d(o)

with M = rotation @ scale @ flip (3x3, axes z, y, x), t a translation and d a smooth displacement field (voxels).
Only the voxels inside the bounding box of all x (plus the interpolation support) that the interpolation touches are
read from the volume, so a memory-mapped volume is read in that region only. Outside the volume the image takes the
pad value and the label 0.
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
    Only the block of that padded crop which the points touch is built: from the lowest corner voxel to the
    highest, plus the next voxel along an axis where some point lies between voxels (always along x). A 2D slice
    so touches one plane of its three-plane crop, and a lookup skips the corners of an axis whose fractions are
    all 0 (their weight is 0: the same values). A trilinear lookup gathers the voxel pairs along x as one complex64
    each: four gathers (two for a slice) instead of eight, about 1.7x faster than `map_coordinates(order=1)`.
    Channels are looked up one at a time: arrays of all of them at once are slower (beyond the cache, and beyond
    malloc's threshold for reusing memory, so fresh pages, each a page fault).
    """

    def __init__(self, coordinates: np.ndarray, crop_zyx):
        self.crop_zyx = tuple(int(n) for n in crop_zyx)
        self.patch_zyx = tuple(coordinates.shape[1:])
        self.fractions, bases = [], []
        shifted = np.empty(coordinates.shape[1:])
        for axis, size in enumerate(self.crop_zyx):
            np.clip(coordinates[axis], -1, size, out=shifted)
            shifted += 1  # >= 0, so truncation is the floor
            base = shifted.astype(np.intp)
            shifted -= base
            self.fractions.append(shifted.astype(np.float32))
            bases.append(base)
        self.far = tuple(bool(fraction.any()) for fraction in self.fractions)  # some weight on the next voxel
        self.low = tuple(int(base.min()) for base in bases)  # in padded-crop voxels (crop voxel + 1)
        self.block_zyx = tuple(int(base.max()) - low + 1 + (self.far[axis] or axis == 2)
                               for axis, (base, low) in enumerate(zip(bases, self.low, strict=True)))
        self.strides = (self.block_zyx[1] * self.block_zyx[2], self.block_zyx[2], 1)
        for axis, base in enumerate(bases):
            base -= self.low[axis]
            base *= self.strides[axis]
            if axis == 0:
                self.flat = base
            else:
                self.flat += base
        self._nearest = None

    def _block(self, crop: np.ndarray, pad_value, dtype) -> np.ndarray:
        """(*block_zyx) of the padded (Z, Y, X) crop in `dtype`; reads only that block of `crop` (a memmap view
        stays on disk elsewhere)."""
        source, target = [], []
        for low, size, n in zip(self.low, self.block_zyx, self.crop_zyx, strict=True):
            first = min(max(low - 1, 0), n)  # the crop voxels inside the block: [first, last)
            last = max(min(low - 1 + size, n), first)
            source.append(slice(first, last))
            target.append(slice(first - low + 1, last - low + 1))
        block = np.empty(self.block_zyx, dtype=dtype)
        if any(t.stop - t.start < size for t, size in zip(target, self.block_zyx, strict=True)):
            block.fill(pad_value)  # the block reaches into the border
        block[tuple(target)] = crop[tuple(source)]
        return block

    def linear(self, crop: np.ndarray, pad_value: float) -> np.ndarray:
        """(*patch) float32 trilinear interpolation of the (Z, Y, X) crop."""
        block = self._block(crop, pad_value, np.float32)
        pairs = np.empty((*block.shape, 2), dtype=np.float32)
        pairs[..., 0] = block
        pairs[..., :-1, 1] = block[..., 1:]
        pairs[..., -1, 1] = pad_value
        values = pairs.view(np.complex64).reshape(-1)
        fz, fy, fx = self.fractions

        def along_x(offset: int) -> np.ndarray:
            pair = np.take(values[offset:], self.flat)  # an offset view, so no shifted index array is built
            low = pair.real
            return low + fx * (pair.imag - low)

        sz, sy = self.strides[0], self.strides[1]
        near = along_x(0)
        if self.far[1]:
            far = along_x(sy)
            near += fy * (far - near)
        if self.far[0]:
            back = along_x(sz)
            if self.far[1]:
                far = along_x(sz + sy)
                back += fy * (far - back)
            near += fz * (back - near)
        return near

    def linear_channels(self, crops: np.ndarray, pad_value: float) -> np.ndarray:
        """(C, *patch) float32: `linear` of each (Z, Y, X) crop of crops (C, Z, Y, X)."""
        out = np.empty((crops.shape[0], *self.patch_zyx), dtype=np.float32)
        for channel, crop in enumerate(crops):
            out[channel] = self.linear(crop, pad_value)
        return out

    def nearest(self, crop: np.ndarray, pad_value=0) -> np.ndarray:
        """(*patch) crop at the nearest voxel (halves round up), in the crop's dtype."""
        if self._nearest is None:  # the same for every crop: made once
            self._nearest = self.flat.copy()
            for fraction, stride, far in zip(self.fractions, self.strides, self.far, strict=True):
                if far:
                    self._nearest += (fraction >= 0.5) * stride
        return np.take(self._block(crop, pad_value, crop.dtype).reshape(-1), self._nearest)


def resample_patch(image_czyx: np.ndarray, label_zyx: np.ndarray | None, coordinates: np.ndarray, *,
                   image_order: int, label_mode: str, pad_value: float):
    """Interpolate every image channel (float32) and the label at `coordinates` (3, *patch; shifted in place),
    once each.

    Only the needed box of the inputs is read (for linear and nearest images, only the voxels the points touch).
    Images: nearest (order 0), trilinear (1) or cubic spline (3, with scipy's map_coordinates). The label is
    nearest or, with "one_hot_linear", the value whose one-hot interpolates highest (ties go to the lower value).
    """
    starts, stops = needed_box(coordinates, image_czyx.shape[-3:], margin=1 if image_order <= 1 else 3)
    local = coordinates  # shifted in place to the crop's frame
    local -= np.asarray(starts, dtype=float).reshape(3, 1, 1, 1)
    box = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    # views, as plain ndarrays (a memmap's views would each run its bookkeeping): the lookups read what they touch
    image_box = np.asarray(image_czyx[(..., *box)])
    label_box = None if label_zyx is None else np.asarray(label_zyx[box])
    return interpolate_box(image_box, label_box, Lookup(local, image_box.shape[1:]), image_order=image_order,
                           label_mode=label_mode, pad_value=pad_value, coordinates=local)


def interpolate_box(image_box: np.ndarray, label_box: np.ndarray | None, lookup, *, image_order: int,
                    label_mode: str, pad_value: float, coordinates: np.ndarray | None = None):
    """(image (C, *patch) float32, label (*patch) or None) of the (C, Z, Y, X) image and (Z, Y, X) label boxes
    through `lookup` (a `Lookup`, or a `planes.PlaneLookup`; its `patch_zyx` is the output size); cubic images
    (order 3) need the local `coordinates` (3, *patch) too. See `resample_patch`."""
    patch = lookup.patch_zyx
    if image_order == 1:
        image = lookup.linear_channels(image_box, pad_value)
    else:
        image = np.empty((image_box.shape[0], *patch), dtype=np.float32)
        for channel in range(image.shape[0]):
            if image_order == 0:  # the crop in float32 first, so that the pad value is cast as before
                image[channel] = lookup.nearest(image_box[channel].astype(np.float32, copy=False), pad_value)
            else:  # values beyond the volume are the pad value and take part, as if the volume had been padded
                ndimage.map_coordinates(np.ascontiguousarray(image_box[channel], dtype=np.float32), coordinates,
                                        output=image[channel], order=3, mode="grid-constant", cval=pad_value)
    if label_box is None:
        return image, None
    if label_mode == "nearest":
        return image, lookup.nearest(label_box)
    label_crop = np.ascontiguousarray(label_box)
    label = np.zeros(patch, dtype=label_box.dtype)
    best = np.full(patch, -1.0, dtype=np.float32)
    for value in np.union1d(np.unique(label_crop), [0]).astype(label_box.dtype):  # lowest first: ties stay low
        score = lookup.linear((label_crop == value).astype(np.float32), 1.0 if value == 0 else 0.0)
        better = score > best
        label[better] = value
        best[better] = score[better]
    return image, label


def crop_patch(array: np.ndarray, start_zyx, patch_zyx, pad_value: float, flip_axes=(), out=None) -> np.ndarray:
    """array[..., start:start + patch] exactly (no interpolation), padded with `pad_value` outside the volume and
    then flipped along the spatial axes `flip_axes` (0 z, 1 y, 2 x), in one copy of the region (into `out`, an
    array of the patch's shape, where given)."""
    stop = [s + p for s, p in zip(start_zyx, patch_zyx, strict=True)]
    spatial = array.shape[-3:]
    source, target = [], []
    for axis, (s, e, n, p) in enumerate(zip(start_zyx, stop, spatial, patch_zyx, strict=True)):
        first, last = max(0, s), max(max(0, s), min(n, e))
        a, b = first - s, last - s  # where the region lies in the patch
        source.append(slice(first, last))
        target.append(slice(p - b, p - a) if axis in flip_axes else slice(a, b))
    region = array[(..., *source)]
    if flip_axes:
        region = np.flip(region, axis=tuple(a - 3 for a in flip_axes))
    out = np.empty((*array.shape[:-3], *patch_zyx), dtype=array.dtype) if out is None else out
    if any(t.stop - t.start < p for t, p in zip(target, patch_zyx, strict=True)):
        out.fill(pad_value)  # the patch reaches beyond the volume
    out[(..., *target)] = region
    return out
