"""Resampling of a patch whose map keeps depth apart from the plane: one in-plane lookup shared by every slice.

    if keeps_slices(matrix):                  # rotation about z, flips, scaling; no elastic field
        z, yx = plane_coordinates(start_zyx, patch_zyx, matrix, translation_zyx)
        image, label = resample_planes(image_czyx, label_zyx, z, yx, image_order=1, label_mode="nearest",
                                       pad_value=0.0)

With M[0, 1:] = M[1:, 0] = 0 the input coordinates of `spatial.sample_coordinates` factor: output slice j samples
the input at depth z[j] (one number per slice) and at in-plane points (y, x) that are the same for every slice.
So the in-plane indices and fractions are computed once for one (Y, X) plane, every input slice that some output
slice touches is interpolated bilinearly with them, and an output slice is its input slice (depth fraction 0: a
rotation about depth of a 2D slice or 2.5D stack) or the blend of the two around it (scaling, which also scales
depth). Lookup, in contrast, repeats the in-plane work for every voxel of every slice, one channel at a time.
"""

from __future__ import annotations

import math

import numpy as np

from SegCore.transforms import spatial


def keeps_slices(matrix: np.ndarray) -> bool:
    """Whether the 3x3 (z, y, x) matrix maps every slice onto a slice (depth unmixed with y and x)."""
    return not (matrix[0, 1] or matrix[0, 2] or matrix[1, 0] or matrix[2, 0])


def plane_coordinates(start_zyx, patch_zyx, matrix: np.ndarray, translation_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(z (Z,) float64 input depth of each output slice, yx (2, Y, X) float64 in-plane input coordinates shared by
    every slice): `spatial.sample_coordinates` for a matrix that `keeps_slices`, computed in the same order, so the
    same numbers."""
    half = [(size - 1) / 2 for size in patch_zyx]
    offsets = [np.arange(size) - h for size, h in zip(patch_zyx, half, strict=True)]
    base = [s + h + t for s, h, t in zip(start_zyx, half, translation_zyx, strict=True)]
    z = base[0] + matrix[0, 0] * offsets[0]
    yx = np.empty((2, *patch_zyx[1:]))
    for axis in (1, 2):
        np.add((base[axis] + matrix[axis, 1] * offsets[1])[:, None], (matrix[axis, 2] * offsets[2])[None, :],
               out=yx[axis - 1])
    return z, yx


class PlaneLookup:
    """`spatial.Lookup`'s lookups for coordinates that factor into slices (z (Z,), yx (2, Y, X), local to a crop of
    `crop_zyx`). As there, the crop is padded 1 voxel before and 2 after with the pad value and coordinates are
    clipped into that border, so that a point beyond the volume blends with the pad value as
    `map_coordinates(mode="grid-constant")` does; only the input slices some output slice touches, and in each
    only the block of rows and columns the points touch, are read. Nearest lookups (labels) use the same float64
    coordinates, fractions and rounding as Lookup: the same voxels. Linear lookups interpolate every channel and
    slice in one `torch.nn.functional.grid_sample` call (weights computed once per point, vectorised), which takes
    the points in float32: positions within ~1e-5 voxel of the float64 ones on crops of a few hundred voxels."""

    def __init__(self, z: np.ndarray, yx: np.ndarray, crop_zyx):
        self.crop_zyx = tuple(int(n) for n in crop_zyx)
        depth = np.clip(z, -1, self.crop_zyx[0]) + 1  # padded-crop slices, >= 0: truncation is the floor
        first = depth.astype(np.intp)
        self.fz = (depth - first).astype(np.float32)
        self.slices = np.union1d(first, first[self.fz > 0] + 1)  # padded-crop slices read, ascending
        self.near = np.searchsorted(self.slices, first)  # row of each output slice's lower input slice
        self.far = np.searchsorted(self.slices, np.minimum(first + 1, self.slices[-1]))
        self.padded, self.fractions, bases = [], [], []
        for axis in (1, 2):
            padded = np.clip(yx[axis - 1], -1, self.crop_zyx[axis]) + 1
            base = padded.astype(np.intp)
            self.fractions.append((padded - base).astype(np.float32))
            self.padded.append(padded)
            bases.append(base)
        self.low = tuple(int(base.min()) for base in bases)
        # from the lowest corner voxel to two past the highest along each axis: every corner of every point is in
        # the block, also where grid_sample's float32 rounds a point up onto the next voxel (it reads all four
        # corners, those of weight 0 too)
        self.block_yx = tuple(int(base.max()) - low + 3 for base, low in zip(bases, self.low, strict=True))
        self.nearest_flat = np.ravel((bases[0] - self.low[0] + (self.fractions[0] >= 0.5)) * self.block_yx[1]
                                     + (bases[1] - self.low[1] + (self.fractions[1] >= 0.5)))
        self.patch_zyx = (self.fz.size, *yx.shape[1:])
        self._grid = None

    def _block(self, crop: np.ndarray, pad_value, dtype, slices=None, shape_yx=None) -> np.ndarray:
        """(..., slices, *shape_yx) block of the padded (..., Z, Y, X) crop in `dtype`, of which the first
        `block_yx` rows and columns are filled (slices: padded-crop slice numbers, ascending; default every slice
        read; shape_yx: default block_yx)."""
        slices = self.slices if slices is None else slices
        source, target = [], []
        for low, size, n in zip(self.low, self.block_yx, self.crop_zyx[1:], strict=True):
            first = min(max(low - 1, 0), n)
            last = max(min(low - 1 + size, n), first)
            source.append(slice(first, last))
            target.append(slice(first - low + 1, last - low + 1))
        inside = np.flatnonzero((slices >= 1) & (slices <= self.crop_zyx[0]))  # one run: slices ascend
        block = np.empty((*crop.shape[:-3], slices.size, *(shape_yx or self.block_yx)), dtype=dtype)
        (rows, columns), (height, width) = target, self.block_yx
        if inside.size < slices.size:  # slices beyond the volume's ends
            block[..., :inside[:1].sum(), :height, :width] = pad_value
            block[..., inside[-1] + 1 if inside.size else 0:, :height, :width] = pad_value
        if inside.size:
            taken = slices[inside] - 1
            # a run of slices (the usual case) is a view of the crop, copied once; else one gather
            source_slices = slice(taken[0], taken[-1] + 1) if taken[-1] - taken[0] == taken.size - 1 else taken
            filled = block[..., inside[0]:inside[-1] + 1, :, :]
            filled[..., :rows.start, :width] = pad_value  # the border around the volume's part, if any
            filled[..., rows.stop:height, :width] = pad_value
            filled[..., rows, :columns.start] = pad_value
            filled[..., rows, columns.stop:width] = pad_value
            filled[..., rows, columns] = crop[..., source_slices, source[0], source[1]]
        return block

    def linear_channels(self, crops: np.ndarray, pad_value: float) -> np.ndarray:
        """(C, Z, Y, X) float32 trilinear interpolation of the (C, Z, Y, X) crops: one bilinear lookup of every
        channel's input slices, then each output slice is its input slice or the blend of the two around it."""
        import torch

        if self._grid is None:
            # grid_sample (align_corners) maps [-1, 1] onto voxels 0 .. n - 1 as (g + 1) * (n - 1) / 2 in float32;
            # with n - 1 a power of two that is exact for whole and dyadic positions (a flip, a rotation by 0, a
            # whole-voxel shift give the crop itself), so the block's rows and columns are counted up to 2^k + 1
            # (the rows and columns past block_yx are never read with a weight)
            self._grid_yx = tuple(2 ** math.ceil(math.log2(n - 1)) + 1 for n in self.block_yx)
            grid = np.empty((1, *self.patch_zyx[1:], 2), dtype=np.float32)
            for axis, (padded, low, n) in enumerate(zip(self.padded, self.low, self._grid_yx, strict=True)):
                grid[0, ..., 1 - axis] = (padded - low) * (2 / (n - 1)) - 1
            self._grid = torch.from_numpy(grid)
        block = self._block(crops, pad_value, np.float32, shape_yx=self._grid_yx)
        channels, count = block.shape[0], self.slices.size
        planes = torch.nn.functional.grid_sample(
            torch.from_numpy(block.reshape(1, channels * count, *self._grid_yx)), self._grid, mode="bilinear",
            padding_mode="border", align_corners=True).numpy().reshape(channels, count, *self.patch_zyx[1:])
        if count == self.fz.size and not self.fz.any() and np.array_equal(self.near, np.arange(count)):
            return planes  # each output slice is its own input slice, in order
        out = planes[:, self.near]
        for j in np.flatnonzero(self.fz):
            out[:, j] += self.fz[j] * (planes[:, self.far[j]] - out[:, j])
        return out

    def linear(self, crop: np.ndarray, pad_value: float) -> np.ndarray:
        """(Z, Y, X) float32 trilinear interpolation of the (Z, Y, X) crop."""
        return self.linear_channels(crop[None], pad_value)[0]

    def nearest(self, crop: np.ndarray, pad_value=0) -> np.ndarray:
        """(Z, Y, X) crop at the nearest voxel (halves round up), in the crop's dtype."""
        slices = self.slices[np.where(self.fz >= 0.5, self.far, self.near)]
        wanted, rows = np.unique(slices, return_inverse=True)  # only the slices that nearest voxels lie in
        block = self._block(crop, pad_value, crop.dtype, wanted).reshape(wanted.size, -1)
        return np.take(block[rows], self.nearest_flat, axis=1).reshape(self.patch_zyx)


def resample_planes(image_czyx: np.ndarray, label_zyx: np.ndarray | None, z: np.ndarray, yx: np.ndarray, *,
                    image_order: int, label_mode: str, pad_value: float):
    """`spatial.resample_patch` for coordinates from `plane_coordinates` (z (Z,), yx (2, Y, X); yx shifted in
    place): image (C, Z, Y, X) float32 (nearest or linear, `image_order` 0 or 1) and label (Z, Y, X) or None."""
    if image_order not in (0, 1):
        raise ValueError("plane lookups interpolate nearest (0) or linear (1) images; cubic goes through Lookup")
    starts, stops = spatial.needed_box([z, yx[0], yx[1]], image_czyx.shape[-3:], margin=1)
    yx -= np.asarray(starts[1:], dtype=float).reshape(2, 1, 1)
    box = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    image_box = np.asarray(image_czyx[(..., *box)])
    lookup = PlaneLookup(z - starts[0], yx, image_box.shape[1:])
    label_box = None if label_zyx is None else np.asarray(label_zyx[box])
    return spatial.interpolate_box(image_box, label_box, lookup, image_order=image_order, label_mode=label_mode,
                                   pad_value=pad_value)
