"""Post-processing of a label map: keep each label's largest connected component, drop small components, fill
holes.

    label_zyx = postprocess_labels(label_zyx, largest_component=[1], fill_holes="all")
    label_zyx = postprocess_labels(label_zyx, min_component_voxels=50, connectivity=6)

Per label value L (a list of values, or "all": every non-zero value present):

- components: the connected components of `label == L` under `connectivity` (26: faces, edges and corners
  touch, the default, as nnU-Net's full connectivity; 6: faces only). `largest_component` keeps only the
  largest; of components of equal size the one met first in (Z, Y, X) raster order is kept, so the result never
  depends on anything but the array. `min_component_voxels` drops components of fewer voxels, for every label.
  Removed voxels become background 0.
- holes (`fill_holes`), after every label's components are done: a hole of L is a connected region of
  background 0 voxels that touches neither the volume's border nor any voxel other than L; it becomes L. The
  background is connected under the dual connectivity (6 for a 26-connected label, 26 for a 6-connected one),
  so a wall that is closed for the label is closed for the background too. A pocket of background that also
  touches another label (a gap between a liver and a tumour inside it) is not enclosed by the liver alone and is
  left as it is; other labels' voxels are never changed, so the order of the labels does not matter.

Work is done per label on its bounding box (scipy.ndimage on the box, not the volume): a background region that
touches the box's border has a neighbour outside the box, where there is no L, so it is no hole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from SegCore.errors import SegCoreError

CONNECTIVITIES = (26, 6)


def _structure(connectivity: int) -> np.ndarray:
    """3x3x3 bool neighbourhood: 6 faces (rank 1) or all 26 neighbours (rank 3)."""
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)


def _label_values(which: Sequence[int] | str, present: list[int], option: str) -> list[int]:
    """The requested label values that occur in the array, ascending; "all" means every value present."""
    if isinstance(which, str):
        if which != "all":
            raise SegCoreError(f"{option} is {which!r}; it must be \"all\" or a list of label values",
                               fix=f'e.g. {option}=[1] or {option}="all"')
        return list(present)
    values = sorted({int(v) for v in which})
    if any(v <= 0 for v in values):
        raise SegCoreError(f"{option} holds {values}; label values must be > 0 (0 is the background)",
                           fix=f"e.g. {option}=[1]")
    return [v for v in values if v in set(present)]


def postprocess_labels(label_zyx: np.ndarray, *, largest_component: Sequence[int] | str = (),
                       min_component_voxels: int = 0, fill_holes: Sequence[int] | str = (),
                       connectivity: int = 26) -> np.ndarray:
    """A post-processed copy of `label_zyx` (the input is never changed); see the module docstring.

    label_zyx: (Z, Y, X) bool or non-negative integer labels, 0 = background. largest_component, fill_holes: a
    list of label values > 0, or "all". min_component_voxels: >= 0 (0: keep every component). connectivity: 26
    (default) or 6, of the labels' components. Returns (Z, Y, X) of the input's dtype.
    """
    label_zyx = np.asarray(label_zyx)
    if label_zyx.ndim != 3:
        raise SegCoreError(f"a label map is (Z, Y, X), got an array of shape {label_zyx.shape}")
    if not (label_zyx.dtype == bool or np.issubdtype(label_zyx.dtype, np.integer)):
        raise SegCoreError(f"post-processing takes an integer label map, got dtype {label_zyx.dtype}",
                           fix="threshold or argmax the probabilities first")
    if connectivity not in CONNECTIVITIES:
        raise SegCoreError(f"connectivity is {connectivity!r}; it must be 26 (faces, edges, corners) or 6 (faces)",
                           fix="connectivity=26 (nnU-Net's full connectivity)")
    if not (isinstance(min_component_voxels, (int, np.integer)) and min_component_voxels >= 0):
        raise SegCoreError(f"min_component_voxels is {min_component_voxels!r}; it must be a whole number >= 0",
                           fix="min_component_voxels=0 keeps every component")
    out = np.array(label_zyx, copy=True)
    work = out.view(np.uint8) if out.dtype == bool else out  # bool: labels are 0 and 1 (find_objects wants ints)
    boxes = []
    if work.size and work.any():
        if work.min() < 0:
            raise SegCoreError(f"label values must be >= 0, found {int(work.min())}", fix="relabel the map")
        # One pass finds every label's box (and so which values are present); a box stays valid (a superset)
        # while components are removed.
        boxes = ndimage.find_objects(work, max_label=int(work.max()))
    present = [value for value, box in enumerate(boxes, start=1) if box is not None]
    largest = _label_values(largest_component, present, "largest_component")
    holes = _label_values(fill_holes, present, "fill_holes")
    sized = present if min_component_voxels > 1 else []
    for value in sorted(set(largest) | set(sized)):
        _filter_components(work[boxes[value - 1]], value, keep_largest=value in largest,
                           min_voxels=int(min_component_voxels), structure=_structure(connectivity))
    background = _structure(6 if connectivity == 26 else 26)
    for value in holes:
        _fill_holes(work[boxes[value - 1]], value, background)
    return out


def _filter_components(box: np.ndarray, value: int, *, keep_largest: bool, min_voxels: int,
                       structure: np.ndarray) -> None:
    """In place on the label's box: components of `value` not kept become 0."""
    components, count = ndimage.label(box == value, structure=structure)
    if count == 0:
        return
    # voxels of components 1..count, one bin each (np.bincount is ~10x slower on int32 component maps)
    sizes = ndimage.histogram(components, 0.5, count + 0.5, count)
    keep = sizes >= min_voxels
    if keep_largest:
        # scipy numbers components in raster order of their first voxel; argmax takes the first of equal sizes
        largest = int(np.argmax(sizes))
        keep[:] = False
        keep[largest] = sizes[largest] >= min_voxels
    if keep.all():
        return
    remove = np.concatenate(([False], ~keep))  # indexed by component number, 0 = not this label
    box[remove[components]] = 0


def _fill_holes(box: np.ndarray, value: int, background: np.ndarray) -> None:
    """In place on the label's box: regions of not-`value` that touch neither the box's border nor any other
    label (they hold only 0) become `value`."""
    regions, count = ndimage.label(box != value, structure=background)
    if count == 0:
        return
    is_hole = np.ones(count + 1, dtype=bool)
    is_hole[0] = False
    for axis in range(3):  # regions reaching a face of the box continue outside it
        for face in (0, -1):
            is_hole[np.take(regions, face, axis=axis)] = False
    is_hole[regions[(box != 0) & (box != value)]] = False  # regions that touch another label
    if is_hole.any():
        box[is_hole[regions]] = value
