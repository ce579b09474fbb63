"""Every metric for one (prediction, reference) pair: binary masks, label maps, or `Volume`s.

Results are plain data: one dict per label, keys `label`, `label_name`, `status`, then `definitions.METRIC_KEYS`
(floats; NaN only where the empty-mask policy says "undefined"). Nothing is printed.

Empty-mask policy for the surface metrics (the overlap ones are in `overlap.py`): both masks empty -> every
distance 0 and surface Dice 1; exactly one empty -> every distance equals the image diagonal in mm (the largest
distance the image allows, so the case stays in the cohort mean and is penalised) and surface Dice 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.metrics.definitions import (
    DEFAULT_TOLERANCE_MM,
    STATUS_BOTH_EMPTY,
    STATUS_OK,
    STATUS_PREDICTION_EMPTY,
    STATUS_REFERENCE_EMPTY,
    SURFACE_KEYS,
)
from SegCore.metrics.masks import as_binary_mask, bounding_box, union_box
from SegCore.metrics.overlap import OverlapCounts, overlap_metrics
from SegCore.metrics.surface import index_to_mm_matrix, surface_distances_cropped
from SegCore.volume import Volume, resample_to_grid

LabelTable = Mapping[int, str] | Sequence[int] | None


def image_diagonal_mm(shape: tuple[int, ...], matrix_zyx: np.ndarray) -> float:
    """Length (mm) of the longest diagonal of the image's extent: the distance penalty for a one-sided empty pair."""
    extent = np.asarray(shape, dtype=float)
    signs = itertools.product((1.0, -1.0), repeat=len(shape) - 1)
    return float(max(np.linalg.norm((extent * np.array((*s, 1.0))) @ matrix_zyx) for s in signs))


def _surface_metrics(pred: np.ndarray, ref: np.ndarray, matrix_zyx: np.ndarray, tolerance_mm: float) -> dict:
    distances = surface_distances_cropped(pred, ref, matrix_zyx)
    return {
        "hd_mm": distances.hausdorff(),
        "hd95_mm": distances.hausdorff_percentile(95.0),
        "hd95_pooled_mm": distances.hausdorff_percentile(95.0, pooled=True),
        "assd_mm": distances.average_symmetric(),
        "msd_pred_to_ref_mm": distances.mean_pred_to_ref(),
        "msd_ref_to_pred_mm": distances.mean_ref_to_pred(),
        "surface_dice": distances.surface_dice(tolerance_mm),
    }


def _empty_surface_metrics(distance_mm: float, surface_dice: float) -> dict:
    return {key: (surface_dice if key == "surface_dice" else distance_mm) for key in SURFACE_KEYS}


def both_empty_metrics() -> dict:
    """Status and metrics of a label absent from both masks: the same for every image (see the policy)."""
    counts = OverlapCounts(0, 0, 0, 1)  # specificity is 1 whatever the number of (true negative) voxels
    return {"status": STATUS_BOTH_EMPTY, **overlap_metrics(counts, 1.0), **_empty_surface_metrics(0.0, 1.0)}


def _check_tolerance(tolerance_mm: float) -> float:
    tolerance = float(tolerance_mm)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise SegCoreError(f"the surface Dice tolerance must be a finite distance >= 0 mm, got {tolerance_mm}")
    return tolerance


def _compare_in_crop(pred: np.ndarray, ref: np.ndarray, *, image_shape: tuple[int, ...], matrix_zyx: np.ndarray,
                     tolerance_mm: float) -> dict:
    """Status and metrics of two bool masks that are crops of an image of `image_shape`.

    The crops must have a background margin (or the image edge) on every side, so that surfaces are unchanged.
    """
    pred_box, ref_box = bounding_box(pred), bounding_box(ref)
    voxel_ml = abs(float(np.linalg.det(matrix_zyx))) / 1000.0
    if pred_box is None and ref_box is None:
        return both_empty_metrics()
    box = union_box([pred_box, ref_box], pred.shape)
    pred, ref = pred[box], ref[box]
    counts = OverlapCounts.from_masks(pred, ref, total_voxels=int(np.prod(image_shape)))
    if pred_box is None or ref_box is None:
        status = STATUS_PREDICTION_EMPTY if pred_box is None else STATUS_REFERENCE_EMPTY
        surface = _empty_surface_metrics(image_diagonal_mm(image_shape, matrix_zyx), 0.0)
    else:
        status = STATUS_OK
        surface = _surface_metrics(pred, ref, matrix_zyx, tolerance_mm)
    return {"status": status, **overlap_metrics(counts, voxel_ml), **surface}


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing_xyz_mm=(1.0, 1.0, 1.0), *, direction=None,
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict:
    """Every metric for two binary masks on the same grid.

    pred, ref: (Z, Y, X) or (Y, X) arrays, bool or 0/1 numbers (anything else raises SegCoreError).
    spacing_xyz_mm: voxel size in (x, y[, z]) order. direction: optional direction matrix (columns = index axes
    i, j, k), only needed for sheared grids. tolerance_mm: for the normalised surface Dice.
    Returns {"status": ..., metric key: float, ...} in `definitions.METRIC_KEYS` order.
    """
    pred = as_binary_mask(pred, what="prediction")
    ref = as_binary_mask(ref, what="reference")
    matrix = _matrix_for(pred, ref, spacing_xyz_mm, direction)
    return _compare_in_crop(pred, ref, image_shape=pred.shape, matrix_zyx=matrix,
                            tolerance_mm=_check_tolerance(tolerance_mm))


def _matrix_for(pred: np.ndarray, ref: np.ndarray, spacing_xyz_mm, direction) -> np.ndarray:
    if pred.shape != ref.shape:
        raise SegCoreError(f"prediction and reference shapes differ (array order): {pred.shape} vs {ref.shape}",
                           fix="compare masks on the same grid (resample the prediction onto the reference)")
    if np.size(spacing_xyz_mm) != pred.ndim:
        raise SegCoreError(f"a {pred.ndim}D mask needs {pred.ndim} spacings (x, y[, z]), got {np.size(spacing_xyz_mm)}")
    return index_to_mm_matrix(spacing_xyz_mm, direction)


def _as_label_map(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise SegCoreError(f"the {what} must be a 2D (Y, X) or 3D (Z, Y, X) label map, got shape {array.shape}",
                           fix="merge segmentation layers into one label map first")
    if array.dtype == bool or array.dtype.kind in "ui":
        return array
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)  # label maps are often stored as float (NIfTI)
    raise SegCoreError(f"the {what} is not a label map: it has dtype {array.dtype} with non-integer values",
                       fix="pass integer labels (threshold or argmax a probability map first)")


def label_table(labels: LabelTable, pred: np.ndarray | None = None, ref: np.ndarray | None = None) -> dict[int, str]:
    """{label value: name}. From a mapping or a list of values, or, when None, from the non-zero values present."""
    if labels is None:
        present: set[int] = set()
        for array in (pred, ref):
            if array is not None:
                present.update(int(v) for v in _present_values(array))
        return {value: f"label_{value}" for value in sorted(present - {0})}
    if isinstance(labels, Mapping):
        table = {int(value): str(name) for value, name in labels.items()}
    else:
        table = {int(value): f"label_{int(value)}" for value in labels}
    if 0 in table:
        raise SegCoreError("label 0 is the background and is not scored", fix="leave 0 out of the label list")
    return table


def _present_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values; bincount for small non-negative integers (a sort over a CT volume is slow)."""
    if array.dtype == bool:
        return np.array([1]) if array.any() else np.array([], dtype=int)
    if array.size and array.dtype.kind in "ui" and array.min() >= 0 and array.max() < 65536:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def compare_label_maps(pred: np.ndarray, ref: np.ndarray, spacing_xyz_mm=(1.0, 1.0, 1.0), *, labels: LabelTable = None,
                       direction=None, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> list[dict]:
    """Every metric for each label of two label maps on the same grid.

    pred, ref: (Z, Y, X) or (Y, X) integer label maps (bool counts as label 1). labels: {value: name}, a list
    of values, or None for every non-zero value present in either map. Returns one row per label, in label
    order: {"label", "label_name", "status", metric keys...}.
    """
    pred = _as_label_map(pred, "prediction")
    ref = _as_label_map(ref, "reference")
    matrix = _matrix_for(pred, ref, spacing_xyz_mm, direction)
    tolerance = _check_tolerance(tolerance_mm)
    # Crop once to everything labelled in either map (+1 voxel of background) so that each label's masks are
    # built on the crop, not the whole image. The boxes are found on the maps themselves (non-zero is True),
    # without a whole-image `!= 0` copy.
    box = union_box([bounding_box(pred), bounding_box(ref)], pred.shape)
    if box is None:
        box = tuple(slice(0, 1) for _ in pred.shape)  # both all background: every label is "both empty"
    pred_crop, ref_crop = pred[box], ref[box]
    table = label_table(labels, pred_crop, ref_crop)
    rows = []
    for value, name in table.items():
        result = _compare_in_crop(pred_crop == value, ref_crop == value, image_shape=pred.shape, matrix_zyx=matrix,
                                  tolerance_mm=tolerance)
        rows.append({"label": value, "label_name": name, **result})
    return rows


def compare_volumes(pred: Volume, ref: Volume, *, labels: LabelTable = None, resample: bool = False,
                    tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> list[dict]:
    """Every metric for each label of two label `Volume`s, in the reference's physical geometry.

    The grids must match (size, spacing, origin, direction; see `Grid.mismatch`); otherwise a SegCoreError says
    how they differ, unless `resample=True`, which resamples the prediction onto the reference grid (nearest
    neighbour, so labels stay labels). Rows as in `compare_label_maps`.
    """
    for volume, what in ((pred, "prediction"), (ref, "reference")):
        if volume.array.ndim != 3:
            raise SegCoreError(f"the {what} has {volume.num_channels} channels; metrics need one (Z, Y, X) label map",
                               fix="merge segmentation layers into one label map first")
    problem = ref.grid.mismatch(pred.grid)
    if problem is not None:
        if not resample:
            raise SegCoreError(f"the prediction and reference grids differ ({problem})",
                               fix="resample the prediction onto the reference grid (resample=True, or "
                                   "--resample on the command line)")
        pred = resample_to_grid(pred, ref.grid, interpolation="nearest")
    return compare_label_maps(pred.array, ref.array, ref.grid.spacing_xyz_mm, labels=labels,
                              direction=ref.grid.direction_lps, tolerance_mm=tolerance_mm)


