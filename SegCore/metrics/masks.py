"""Binary masks for the metrics: input checks, bounding boxes, crops and surface (boundary) voxels.

Everything here works on boolean arrays in (Z, Y, X) order (or (Y, X) for 2D). The speed of the surface metrics
comes from this module: a full CT volume is scanned once per mask for its bounding box, and all later work
happens on the crop around both masks, so its cost scales with the organ, not with the image.
"""

from __future__ import annotations

import numpy as np

from SegCore.errors import SegCoreError


def as_binary_mask(array: np.ndarray, *, what: str = "mask") -> np.ndarray:
    """A boolean view or copy of a binary mask.

    array: (Z, Y, X) or (Y, X), dtype bool or numeric with values in {0, 1} only.
    Returns a bool array of the same shape (a view when the input is bool or (u)int8).
    Raises SegCoreError when the array holds other values: a label map must be compared label by label.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise SegCoreError(f"the {what} must be a 2D (Y, X) or 3D (Z, Y, X) array, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "uif":
        raise SegCoreError(f"the {what} has dtype {array.dtype}, not a number", fix="pass a bool or integer mask")
    if array.size and (array.min() < 0 or array.max() > 1 or (array.dtype.kind == "f" and
                                                             np.any((array != 0) & (array != 1)))):
        raise SegCoreError(
            f"the {what} is not binary: its values span {array.min()}..{array.max()}, a binary mask has only 0 and 1",
            fix="threshold a probability map first, or compare label maps per label (compare_label_maps)")
    if array.dtype.itemsize == 1 and array.dtype.kind in "ui":
        return array.view(bool)  # 0/1 bytes are valid booleans: no copy of a 79 MB CT mask
    return array != 0


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The tight bounding box of the True voxels as one slice per axis, or None for an empty mask.

    mask: (Z, Y, X) or (Y, X), bool or a label map (non-zero counts as True, so no `!= 0` copy is needed).
    One pass over the array for the first axis, then passes over the slab only.
    """
    boxes: list[slice] = []
    view = mask
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(view.any(axis=other_axes))
        if hits.size == 0:
            return None
        first, last = int(hits[0]), int(hits[-1]) + 1
        boxes.append(slice(first, last))
        # Later axes only need the slab between first and last along this axis.
        index = [slice(None)] * mask.ndim
        index[axis] = slice(first, last)
        view = view[tuple(index)]
    return tuple(boxes)


def union_box(boxes: list[tuple[slice, ...] | None], shape: tuple[int, ...], margin: int = 1
              ) -> tuple[slice, ...] | None:
    """The box around all given boxes, grown by `margin` voxels and clipped to `shape`; None if all are None."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(slice(max(min(b[a].start for b in present) - margin, 0),
                       min(max(b[a].stop for b in present) + margin, shape[a]))
                 for a in range(len(shape)))


def boundary(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion by the face-connected (6-neighbour in 3D) structuring element.

    Voxels outside the array count as background (scipy's `binary_erosion` with border_value=0, as in MONAI and
    MedPy), so a mask touching the array's edge has surface voxels there. bool in, bool of the same shape out.
    """
    padded = np.pad(mask, 1)
    inner = mask.copy()
    centre = [slice(1, -1)] * mask.ndim
    for axis in range(mask.ndim):
        for step in (-1, 1):
            shifted = list(centre)
            shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            inner &= padded[tuple(shifted)]
    return mask & ~inner


def voxel_indices(mask: np.ndarray) -> np.ndarray:
    """(N, ndim) int64 indices of the True voxels, in array axis order (z, y, x); C order, like np.argwhere."""
    flat = np.flatnonzero(mask)
    # Unravelling the flat indices by hand is several times faster than np.argwhere on large crops.
    out = np.empty((flat.size, mask.ndim), dtype=np.int64)
    for axis in range(mask.ndim - 1, -1, -1):
        flat, out[:, axis] = np.divmod(flat, mask.shape[axis])
    return out
