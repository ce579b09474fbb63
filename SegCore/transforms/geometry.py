"""Spatial preprocessing steps: reorient, resample, zoom, crop (foreground, box, label) and pad, each with its
inverse.

Arrays are (..., Z, Y, X): every channel of a (C, Z, Y, X) image moves alike, and a (Z, Y, X) label with it.
Index axis c (i, j, k) is array axis -1 - c. Each step records the facts that invert it; `inverse` maps an
array on the step's output grid back onto its input grid (the preprocessor stores both grids in the record).
"""

from __future__ import annotations

import math

import numpy as np

from SegCore.datasets.views import nearest_index_axes
from SegCore.errors import SegCoreError
from SegCore.transforms.interpolation import ORDERS, interpolate
from SegCore.transforms.parameters import REQUIRED, Parameter, StepKind, choice, integer, number, on_voxels, triple
from SegCore.volume import Grid

LABEL_MODES = ("nearest", "one_hot_linear")


def grid_to_json(grid: Grid) -> dict:
    return {"shape_zyx": [int(s) for s in grid.shape_zyx], "spacing_xyz_mm": [float(s) for s in grid.spacing_xyz_mm],
            "origin_lps": [float(o) for o in grid.origin_lps],
            "direction_lps": [[float(v) for v in row] for row in grid.direction_lps]}


def grid_from_json(data: dict) -> Grid:
    return Grid(tuple(int(s) for s in data["shape_zyx"]), tuple(float(s) for s in data["spacing_xyz_mm"]),
                tuple(float(o) for o in data["origin_lps"]), tuple(tuple(float(v) for v in row)
                                                                  for row in data["direction_lps"]))


def _grid_at(grid: Grid, start_zyx, shape_zyx, *, spacing_xyz_mm=None, direction_lps=None) -> Grid:
    """A grid whose voxel (0, 0, 0) is `grid`'s (continuous) voxel `start_zyx` (z, y, x)."""
    origin = grid.index_to_lps(np.asarray(start_zyx, dtype=float)[::-1])[0]
    spacing = grid.spacing_xyz_mm if spacing_xyz_mm is None else spacing_xyz_mm
    direction = grid.direction_lps if direction_lps is None else direction_lps
    return Grid(tuple(int(s) for s in shape_zyx), tuple(float(s) for s in spacing), tuple(origin.tolist()),
                tuple(tuple(float(v) for v in row) for row in np.asarray(direction, dtype=float)))


# --- reorient -------------------------------------------------------------------------------------------------
def _reorientation(grid: Grid) -> tuple[list[int], list[bool]]:
    """(permutation, flips): new index axis a is old index axis permutation[a], reversed where flips[a], so that
    new axes i, j, k run along L, P, S (the nearest patient axis; an oblique grid keeps its small rotation)."""
    direction = np.asarray(grid.direction_lps, dtype=float)
    permutation = list(nearest_index_axes(direction))
    flips = [bool(direction[a, permutation[a]] < 0) for a in range(3)]
    return permutation, flips


def _reorient_array(array: np.ndarray, permutation, flips) -> np.ndarray:
    lead = array.ndim - 3
    # new array axis (2 - a) holds index axis a = old index axis permutation[a] = old array axis 2 - permutation[a]
    order = [2 - permutation[2 - m] for m in range(3)]
    out = np.transpose(array, list(range(lead)) + [lead + o for o in order])
    flip_axes = tuple(lead + 2 - a for a in range(3) if flips[a])
    return np.flip(out, flip_axes) if flip_axes else out


def _reorient_grid(params, grid: Grid) -> Grid:
    permutation, flips = _reorientation(grid)
    direction = np.asarray(grid.direction_lps, dtype=float)
    old_size_ijk = list(grid.shape_zyx)[::-1]
    spacing = [grid.spacing_xyz_mm[permutation[a]] for a in range(3)]
    columns = np.stack([(-1 if flips[a] else 1) * direction[:, permutation[a]] for a in range(3)], axis=1)
    corner_ijk = np.zeros(3)  # the old voxel that becomes voxel (0, 0, 0)
    for a in range(3):
        if flips[a]:
            corner_ijk[permutation[a]] = old_size_ijk[permutation[a]] - 1
    shape_zyx = [old_size_ijk[permutation[2 - m]] for m in range(3)]
    return _grid_at(grid, corner_ijk[::-1], shape_zyx, spacing_xyz_mm=spacing, direction_lps=columns)


def _reorient_forward(params, image, label, grid):
    permutation, flips = _reorientation(grid)
    new_grid = _reorient_grid(params, grid)
    image = _reorient_array(image, permutation, flips)
    label = None if label is None else _reorient_array(label, permutation, flips)
    return image, label, new_grid, {"permutation_ijk": permutation, "flipped_ijk": flips}


def _reorient_inverse(record, array, probabilities):
    permutation, flips = record["permutation_ijk"], record["flipped_ijk"]
    lead = array.ndim - 3
    flip_axes = tuple(lead + 2 - a for a in range(3) if flips[a])
    out = np.flip(array, flip_axes) if flip_axes else array
    order = [2 - permutation[2 - m] for m in range(3)]
    inverse_order = list(np.argsort(order))
    return np.transpose(out, list(range(lead)) + [lead + int(o) for o in inverse_order])


# --- resample -------------------------------------------------------------------------------------------------
def resampled_grid(grid: Grid, spacing_xyz_mm) -> Grid:
    """`grid` at a new spacing (None entries keep an axis), same direction and centre; each size is the old
    extent over the new spacing, rounded half up (at least 1)."""
    old = np.asarray(grid.spacing_xyz_mm, dtype=float)
    new = np.array([o if t is None else t for o, t in zip(old, spacing_xyz_mm, strict=True)], dtype=float)
    size_ijk = np.asarray(grid.shape_zyx[::-1], dtype=float)
    new_size = np.array([max(1, math.floor(n * o / t + 0.5)) for n, o, t in zip(size_ijk, old, new, strict=True)])
    # keep the centre of the old voxel lattice: new voxel 0 sits at old index (n-1)/2 - (n'-1)/2 * t/o
    start_ijk = (size_ijk - 1) / 2 - (new_size - 1) / 2 * new / old
    return _grid_at(grid, start_ijk[::-1], new_size[::-1], spacing_xyz_mm=new)


def _index_map(source: Grid, target: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(scale_zyx, offset_zyx): target voxel index z, y, x lies at source index scale * index + offset.

    The grids must share their direction (resampling only changes spacing, size and origin)."""
    matrix = np.linalg.inv(source.ijk_to_lps()) @ target.ijk_to_lps()
    scale = np.diag(matrix[:3, :3])
    if not np.allclose(matrix[:3, :3], np.diag(scale), atol=1e-6):
        raise SegCoreError("a resample record joins two grids with different directions",
                           fix="recompute the preprocessing record with this version of SegCore")
    return scale[::-1].copy(), matrix[:3, 3][::-1].copy()


def _resample_label(label: np.ndarray, source: Grid, target: Grid, mode: str) -> np.ndarray:
    scale, offset = _index_map(source, target)
    if mode == "nearest":
        return interpolate(label, scale, offset, target.shape_zyx, 0)
    # one-hot linear: each label value's mask interpolated, the largest wins (the first value on a tie)
    best = np.full(target.shape_zyx, -1.0, dtype=np.float32)
    out = np.zeros(target.shape_zyx, dtype=label.dtype)
    for value in np.unique(label):
        weight = interpolate((label == value).astype(np.float32), scale, offset, target.shape_zyx, 1)
        better = weight > best
        out[better], best[better] = value, weight[better]
    return out


def _resample_grid(params, grid: Grid) -> Grid:
    target = resampled_grid(grid, params["spacing_xyz_mm"])
    return grid if target.same_as(grid) else target  # within header tolerance: nothing to resample


def _resample_onto(target: Grid, params, image, label, grid):
    """image and label interpolated from `grid` onto `target` (same direction); `target is grid`: unchanged."""
    if target is grid:
        return image, label, grid, {"identity": True}
    scale, offset = _index_map(grid, target)
    image = interpolate(image, scale, offset, target.shape_zyx, params["image_order"])
    label = None if label is None else _resample_label(label, grid, target, params["label_mode"])
    return image, label, target, {"identity": False}


def _resample_forward(params, image, label, grid):
    return _resample_onto(_resample_grid(params, grid), params, image, label, grid)


def _resample_inverse(record, array, probabilities):
    if record["identity"]:
        return array
    source, target = grid_from_json(record["output_grid"]), grid_from_json(record["input_grid"])
    if probabilities:  # linear: a spline would leave [0, 1]
        scale, offset = _index_map(source, target)
        return interpolate(array, scale, offset, target.shape_zyx, 1)
    return _resample_label(array, source, target, record["params"]["label_mode"])


# --- zoom -----------------------------------------------------------------------------------------------------
def zoomed_grid(grid: Grid, scale_zyx) -> Grid:
    """`grid` scaled by `scale_zyx` (z, y, x): m = n * scale voxels per axis, rounded half up (at least 1), over
    the same extent (spacing * n / m), same direction. New voxel i lies at old index (i + 0.5) * n / m - 0.5, the
    sample points of torch's F.interpolate(size=m, align_corners=False): the atrium locator's downscaling, whatever
    the spacing (resample fixes a spacing in mm instead)."""
    shape = [max(1, math.floor(n * s + 0.5)) for n, s in zip(grid.shape_zyx, scale_zyx, strict=True)]
    ratio_zyx = [n / m for n, m in zip(grid.shape_zyx, shape, strict=True)]
    spacing = [s * r for s, r in zip(grid.spacing_xyz_mm, ratio_zyx[::-1], strict=True)]
    return _grid_at(grid, [0.5 * r - 0.5 for r in ratio_zyx], shape, spacing_xyz_mm=spacing)


def _zoom_grid(params, grid: Grid) -> Grid:
    target = zoomed_grid(grid, params["scale_zyx"])
    return grid if target.same_as(grid) else target


def _zoom_forward(params, image, label, grid):
    return _resample_onto(_zoom_grid(params, grid), params, image, label, grid)


# --- crop -----------------------------------------------------------------------------------------------------
def _box_around(mask: np.ndarray, margin_zyx) -> tuple[list[int], list[int]] | None:
    """[start, stop) per axis of the mask's bounding box grown by the margin, inside the array; None if empty."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(max(0, int(hits[0]) - margin_zyx[axis]))
        stop.append(min(mask.shape[axis], int(hits[-1]) + 1 + margin_zyx[axis]))
    return start, stop


def _crop(image, label, grid, box, facts):
    shape = list(grid.shape_zyx)
    start, stop = box if box is not None else ([0, 0, 0], shape)
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    new_grid = _grid_at(grid, start, [b - a for a, b in zip(start, stop, strict=True)])
    label = None if label is None else label[region]
    return image[(Ellipsis,) + region], label, new_grid, {"start_zyx": list(start), "stop_zyx": list(stop),
                                                          "empty": box is None, **facts}


def _crop_foreground_forward(params, image, label, grid):
    channel = params["channel"]
    if channel >= image.shape[0]:
        raise SegCoreError(f"crop_foreground uses channel {channel}, but the image has {image.shape[0]} channel(s)",
                           fix=f"set \"channel\" to 0..{image.shape[0] - 1}")
    return _crop(image, label, grid, _box_around(image[channel] > params["threshold"], params["margin_zyx"]), {})


def _crop_to_label_forward(params, image, label, grid):
    if label is None:
        raise SegCoreError("crop_to_label needs a label map, and none was given (at inference there is none)",
                           fix="give the label, or use crop_foreground or crop_box")
    return _crop(image, label, grid, _box_around(label > 0, params["margin_zyx"]), {})


def _clipped_box(params, grid: Grid) -> tuple[list[int], list[int]]:
    shape = list(grid.shape_zyx)
    start = params["start_zyx"]
    stop = [min(b, n) for b, n in zip(params["stop_zyx"], shape, strict=True)]
    if any(a >= b for a, b in zip(start, stop, strict=True)):
        raise SegCoreError(f"crop box {start}..{params['stop_zyx']} (z, y, x) lies outside the image of size "
                           f"{shape}", fix="choose start_zyx inside the image")
    return start, stop


def _crop_box_grid(params, grid: Grid) -> Grid:
    start, stop = _clipped_box(params, grid)
    return _grid_at(grid, start, [b - a for a, b in zip(start, stop, strict=True)])


def _crop_box_forward(params, image, label, grid):
    return _crop(image, label, grid, _clipped_box(params, grid), {})


def _crop_inverse(record, array, probabilities):
    shape = record["input_grid"]["shape_zyx"]
    out = np.zeros(array.shape[:-3] + tuple(shape), dtype=array.dtype)
    if probabilities:
        out[0] = 1.0  # outside the crop is background
    region = tuple(slice(a, b) for a, b in zip(record["start_zyx"], record["stop_zyx"], strict=True))
    out[(Ellipsis,) + region] = array
    return out


def _check_box(params):
    if any(a >= b for a, b in zip(params["start_zyx"], params["stop_zyx"], strict=True)):
        return f"start_zyx {params['start_zyx']} must be below stop_zyx {params['stop_zyx']} on every axis"
    return None


# --- pad ------------------------------------------------------------------------------------------------------
def _pad_widths(params, grid: Grid) -> tuple[list[int], list[int]]:
    before, after = [], []
    for n, multiple, minimum in zip(grid.shape_zyx, params["multiple_zyx"], params["min_zyx"], strict=True):
        size = math.ceil(max(n, minimum) / multiple) * multiple
        before.append((size - n) // 2)  # centred, the odd voxel after
        after.append(size - n - (size - n) // 2)
    return before, after


def _pad_grid(params, grid: Grid) -> Grid:
    before, after = _pad_widths(params, grid)
    shape = [n + b + a for n, b, a in zip(grid.shape_zyx, before, after, strict=True)]
    return _grid_at(grid, [-b for b in before], shape)


def _pad_forward(params, image, label, grid):
    before, after = _pad_widths(params, grid)
    widths = list(zip(before, after, strict=True))
    lead = [(0, 0)] * (image.ndim - 3)
    if not any(before + after):  # already a multiple: no copy of the whole image
        return image, label, grid, {"before_zyx": before, "after_zyx": after}
    if params["mode"] == "edge":
        image = np.pad(image, lead + widths, mode="edge")
    else:
        image = np.pad(image, lead + widths, mode="constant", constant_values=params["value"])
    label = None if label is None else np.pad(label, widths, mode="constant", constant_values=0)
    return image, label, _pad_grid(params, grid), {"before_zyx": before, "after_zyx": after}


PAD_SLAB = 8  # slices copied between two hand-backs of the source (`_pad_forward_owned`)


def _pad_forward_owned(params, image, label, grid):
    """`_pad_forward` consuming its (C, Z, Y, X) source: the padded image is filled slab by slab along z, and each
    slab of the source goes back to the system once copied (SegCore.memory, Linux). Edge padding, which reads
    the source's edges at the end, takes the plain path."""
    from SegCore.memory import release_slices

    before, after = _pad_widths(params, grid)
    if not any(before + after) or params["mode"] == "edge" or image.ndim != 4 or not image.flags.c_contiguous:
        return _pad_forward(params, image, label, grid)
    shape = [n + b + a for n, b, a in zip(image.shape[1:], before, after, strict=True)]
    out = np.empty((image.shape[0], *shape), dtype=image.dtype)  # untouched pages: memory only as it is written
    out[:, :before[0]] = params["value"]
    out[:, before[0] + image.shape[1]:] = params["value"]
    rows, columns = slice(before[1], before[1] + image.shape[2]), slice(before[2], before[2] + image.shape[3])
    for z in range(0, image.shape[1], PAD_SLAB):
        stop = min(z + PAD_SLAB, image.shape[1])
        slab = out[:, before[0] + z:before[0] + stop]
        slab[...] = params["value"]
        slab[:, :, rows, columns] = image[:, z:stop]
        release_slices(image, stop)
    widths = list(zip(before, after, strict=True))
    label = None if label is None else np.pad(label, widths, mode="constant", constant_values=0)
    return out, label, _pad_grid(params, grid), {"before_zyx": before, "after_zyx": after}


def _pad_inverse(record, array, probabilities):
    region = tuple(slice(b, array.shape[array.ndim - 3 + axis] - a)
                   for axis, (b, a) in enumerate(zip(record["before_zyx"], record["after_zyx"], strict=True)))
    return array[(Ellipsis,) + region]


_MARGIN = Parameter([0, 0, 0], triple(integer(), "voxel counts >= 0 (z, y, x)"))

GEOMETRY_STEPS = {
    "reorient": StepKind({}, _reorient_forward, _reorient_inverse, grid=_reorient_grid),
    "resample": StepKind({
        "spacing_xyz_mm": Parameter(REQUIRED, triple(number(positive=True), "spacings in mm > 0 (x, y, z)",
                                                     allow_none=True)),
        "image_order": Parameter(3, choice(*ORDERS)),
        "label_mode": Parameter("nearest", choice(*LABEL_MODES)),
    }, _resample_forward, _resample_inverse, grid=_resample_grid),
    "zoom": StepKind({
        "scale_zyx": Parameter(REQUIRED, triple(number(positive=True), "scale factors > 0 (z, y, x)")),
        "image_order": Parameter(1, choice(*ORDERS)),
        "label_mode": Parameter("nearest", choice(*LABEL_MODES)),
    }, _zoom_forward, _resample_inverse, grid=_zoom_grid),
    "crop_foreground": StepKind({
        "margin_zyx": _MARGIN,
        "channel": Parameter(0, integer()),
        "threshold": Parameter(0.0, number()),
    }, _crop_foreground_forward, _crop_inverse, grid=on_voxels),
    "crop_box": StepKind({
        "start_zyx": Parameter(REQUIRED, triple(integer(), "voxel indices >= 0 (z, y, x)")),
        "stop_zyx": Parameter(REQUIRED, triple(integer(low=1), "voxel indices >= 1 (z, y, x)")),
    }, _crop_box_forward, _crop_inverse, _check_box, grid=_crop_box_grid),
    "crop_to_label": StepKind({"margin_zyx": _MARGIN}, _crop_to_label_forward, _crop_inverse, grid=on_voxels),
    "pad": StepKind({
        "multiple_zyx": Parameter([1, 1, 1], triple(integer(low=1), "voxel counts >= 1 (z, y, x)")),
        "min_zyx": Parameter([1, 1, 1], triple(integer(low=1), "voxel counts >= 1 (z, y, x)")),
        "mode": Parameter("constant", choice("constant", "edge")),
        "value": Parameter(0.0, number()),
    }, _pad_forward, _pad_inverse, grid=_pad_grid, forward_owned=_pad_forward_owned),
}
