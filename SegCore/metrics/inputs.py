"""Label files for evaluation: read one as a label map (refusing an image passed by mistake), the non-zero values
it holds, and segment names.

The checks are cheap on purpose: a uint8 or bool map cannot look like an image and costs nothing; wider types
cost one or two reductions over the array and, at most, the distinct values of a strided sample. A CT or MR
passed as a prediction or reference is refused here, before it becomes a thousand "labels".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.metrics.masks import bounding_box
from SegCore.volume import Volume

# More distinct non-zero values than this and the file is an image, not a label map (anatomical label sets,
# FreeSurfer's or TotalSegmentator's, have about 100).
MAX_LABELS = 255
_SAMPLE_STEP = 61  # every 61st voxel: ~1/60 of the work, and a prime, so no alignment with image rows


def label_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct non-zero values (int64) of an integer or bool (Z, Y, X) map.

    Only the bounding box of the non-zero voxels is scanned after one pass for the box, so the cost follows
    the labelled region, not the image.
    """
    box = bounding_box(array)
    if box is None:
        return np.zeros(0, dtype=np.int64)
    crop = array[box]
    if crop.dtype == bool:
        return np.ones(1, dtype=np.int64)
    if crop.dtype.kind in "ui" and crop.dtype.itemsize <= 2 and int(crop.min()) >= 0:
        values = np.flatnonzero(np.bincount(crop.reshape(-1)))  # a histogram: cheaper than sorting
    else:
        values = np.unique(crop).astype(np.int64)
    return values[values != 0].astype(np.int64)


def image_sign(array: np.ndarray) -> str | None:
    """Why `array` looks like an intensity image rather than a label map, or None when it may be a label map.

    Signs: non-integer values, negative values, more than `MAX_LABELS` distinct non-zero values. Floats with
    NaN/Inf are refused by the readers before this.
    """
    kind = array.dtype.kind
    if kind == "b" or (kind == "u" and array.dtype.itemsize == 1):
        return None  # at most 255 non-zero values, none negative
    flat = array.reshape(-1)
    sample = flat[::_SAMPLE_STEP]
    if kind == "f":
        for values in (sample, flat):  # the sample refuses a float image without a pass over all of it
            fractional = values != np.round(values)
            if fractional.any():
                return f"it holds non-integer values (e.g. {float(values[fractional][0]):g})"
    if flat.size == 0:
        return None
    low, high = flat.min(), flat.max()
    if low < 0:
        return f"it holds negative values (from {float(low):g} to {float(high):g})"
    if high <= MAX_LABELS:
        return None
    distinct = np.unique(sample)
    if np.count_nonzero(distinct) > MAX_LABELS:
        return f"it holds at least {np.count_nonzero(distinct)} distinct values (a label map has at most {MAX_LABELS})"
    distinct = np.unique(flat[flat != 0])  # few values spread wide (FreeSurfer-style codes): count them all
    if distinct.size > MAX_LABELS:
        return f"it holds {distinct.size} distinct values (a label map has at most {MAX_LABELS})"
    return None


def check_label_map(volume: Volume, path: str | os.PathLike, what: str) -> Volume:
    """`volume` as an integer label map, or SegCoreError naming `path` when it looks like an image.

    what: 'prediction' or 'reference', for the message. bool becomes uint8; whole-number floats become the
    smallest unsigned type that holds them (NIfTI label maps are often stored as float).
    """
    sign = image_sign(volume.array)
    if sign is not None:
        raise SegCoreError(f"the {what} looks like an image, not a label map: {sign}", path=path,
                           fix=f"pass a label map (0 = background, 1, 2, ... = labels) as the {what}, not the "
                               "scan it segments")
    array = volume.array
    if array.dtype == bool:
        return volume.with_array(array.view(np.uint8))
    if array.dtype.kind == "f":
        high = int(array.max()) if array.size else 0
        return volume.with_array(array.astype(np.min_scalar_type(high)))
    return volume


@dataclass(frozen=True)
class LabelFile:
    """A label map read from disk, with its segment names when the file has them (.seg.nrrd)."""

    volume: Volume  # (Z, Y, X), integer
    names: dict[int, str] | None  # label value -> segment name
    path: Path

    @cached_property
    def values(self) -> np.ndarray:
        """Sorted non-zero values present (int64), computed once per file."""
        return label_values(self.volume.array)


def read_labels(path: str | os.PathLike, what: str = "label map") -> LabelFile:
    """A (Z, Y, X) integer label map and, for a .seg.nrrd, {value: segment name}.

    what: 'prediction' or 'reference', named in the error when the file looks like an image (see `image_sign`).
    """
    from SegCore.atomic import file_suffix
    from SegCore.io import read_image, read_segmentation
    from SegCore.io.segmentation import merge_layers

    if file_suffix(path) == ".seg.nrrd":
        volume, segments = merge_layers(*read_segmentation(path), path=path)
        names = {s.label_value: s.name for s in segments}
    else:
        volume, names = read_image(path, allow_4d=False), None
    return LabelFile(check_label_map(volume, path, what), names, Path(path))


def rename_by_segment_name(pred: LabelFile, names_to_values: dict[str, int]) -> Volume:
    """The prediction's label map with values changed so that segment names match the reference's values.

    Used when the prediction is a .seg.nrrd whose segment names are all known: Slicer numbers segments by
    position, so the same organ may carry different values in two files.
    """
    if not pred.names or any(name not in names_to_values for name in pred.names.values()):
        return pred.volume
    mapping = {value: names_to_values[name] for value, name in pred.names.items()}
    if all(a == b for a, b in mapping.items()):
        return pred.volume
    size = max(max(mapping), int(pred.volume.array.max())) + 1
    dtype = np.promote_types(pred.volume.array.dtype, np.min_scalar_type(max(size - 1, *mapping.values())))
    lookup = np.arange(size, dtype=dtype)  # a small type: a CT-sized int64 copy would be 600 MB
    for old, new in mapping.items():
        lookup[old] = new
    return pred.volume.with_array(lookup[pred.volume.array])
