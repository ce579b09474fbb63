"""Separable interpolation of (..., Z, Y, X) arrays under an axis-aligned map (target index -> source index
`scale * index + offset` per axis), as resampling between two grids with one direction needs.

One axis at a time: (order + 1) taps per axis instead of (order + 1)^3 for a 3D stencil, and an axis that maps
onto itself is skipped. The results equal ITK's: nearest rounds ties up (ITK's `RoundHalfIntegerUp`); linear
repeats the edge value past the last voxel centre (ITK's linear interpolator with nearest-neighbour
extrapolation); cubic is the B-spline with mirror boundaries (ITK's `BSplineInterpolateImageFunction`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ORDERS = (0, 1, 3)


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A 1-D array shaped to broadcast along `axis` of an ndim-dimensional array."""
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected about the first and last voxel centres (d c b | a b c d | c b a)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index > size - 1, period - index, index)


def _one_axis(array: np.ndarray, axis: int, scale: float, offset: float, size: int, order: int) -> np.ndarray:
    n = array.shape[axis]
    position = scale * np.arange(size) + offset
    if order == 0:
        index = np.clip(np.floor(position + 0.5).astype(np.int64), 0, n - 1)
        return np.take(array, index, axis=axis)
    if order == 1:
        position = np.clip(position, 0, n - 1)
        base = np.floor(position)
        t = position - base
        base = base.astype(np.int64)
        taps = [(np.minimum(base, n - 1), 1 - t), (np.minimum(base + 1, n - 1), t)]
    else:  # cubic B-spline on coefficients prefiltered along this axis
        array = ndimage.spline_filter1d(array, order=3, axis=axis, mode="mirror", output=np.float32)
        base = np.floor(position)
        t = position - base
        base = base.astype(np.int64)
        weights = [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6]
        taps = [(_mirror(base + k - 1, n), weights[k]) for k in range(4)]
    out = None
    for index, weight in taps:
        term = np.take(array, index, axis=axis) * _along(weight.astype(np.float32), axis, array.ndim)
        out = term if out is None else out + term
    return out


def interpolate(array: np.ndarray, scale_zyx, offset_zyx, shape_zyx, order: int) -> np.ndarray:
    """(..., Z, Y, X) -> (..., *shape_zyx): out[..., z, y, x] = array at source index (scale * (z, y, x) +
    offset), by nearest neighbour (order 0, any dtype kept) or linear / cubic spline (1, 3; in float32).
    The result may be `array` itself when every axis maps onto itself."""
    out = array if order == 0 else array.astype(np.float32, copy=False)
    for axis in range(3):
        dim = array.ndim - 3 + axis
        if abs(scale_zyx[axis] - 1) < 1e-9 and abs(offset_zyx[axis]) < 1e-9 and shape_zyx[axis] == array.shape[dim]:
            continue  # this axis maps onto itself: interpolation there is the identity
        out = _one_axis(out, dim, float(scale_zyx[axis]), float(offset_zyx[axis]), int(shape_zyx[axis]), order)
    return out
