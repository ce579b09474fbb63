"""Label `Volume`s <-> segmentation nodes: segments with names, colours, label values and terminology.

    segments = study_segments(get_study("atrium").labels)          # SegCore.io Segments (colours 0..1)
    seg_node = labels_to_segmentation_node(labels, segments, scene, reference_node=input_node)
    labels, segments = segmentation_node_to_labels(seg_node, grid_from_node(input_node))

A label map becomes one shared binary-labelmap layer (Slicer's own layout for non-overlapping segments): one
segment per `Segment`, whose label value is the voxel value, so values are preserved; a segment whose value has no
voxel stays as an empty segment, so every label of the study is listed. Back to a label map, a segmentation is
sampled onto a grid segment by segment (nearest neighbour, in the segmentation's own coordinates: no parent
transform is applied, as in `volumes.py`). Two segments that share a voxel are refused by default
(`overlap="error"`); `overlap="last"` lets the later segment in the segmentation's order win, which is what
Slicer's own label-map export does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import slicer
import vtk

from SegCore.errors import SegCoreError
from SegCore.io.segmentation import Segment
from SegCore.slicer_utils.volumes import (
    numpy_matrix,
    oriented_image,
    oriented_image_of_grid,
    volume_from_oriented_image,
)
from SegCore.volume import Grid, Volume, place_on_grid

OVERLAP_RULES = ("error", "last")


def study_segments(labels: Sequence) -> list[Segment]:
    """Segments for a study's `Label`s (SegCore.studies.schema; background left out): name, value, colour
    (colour_rgb 0..255 scaled to 0..1) and the TerminologyEntry string, as a checkpoint's labels give them."""
    from SegCore.inference.outputs import segments_from_labels

    return segments_from_labels([{"value": label.value, "name": label.name, "colour_rgb": label.colour_rgb,
                                  "terminology": label.terminology.to_slicer_entry() if label.terminology else None}
                                 for label in labels])


def _label_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.int16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise SegCoreError(f"label value {max_value} is too large for a segmentation (at most 2^31 - 1)")


def _checked_labels(labels: Volume, segments: Sequence[Segment]) -> np.ndarray:
    """labels.array as a uint8/int16/int32 (Z, Y, X) map after checking that `segments` describe it."""
    array = labels.array
    if array.ndim != 3 or not (array.dtype == bool or array.dtype.kind in "iu"):
        raise SegCoreError(f"a label map is one (Z, Y, X) integer array, got shape {array.shape} {array.dtype}",
                           fix="pass the prediction's label Volume")
    values = [int(segment.label_value) for segment in segments]
    if len(set(values)) != len(values) or any(value < 1 for value in values):
        raise SegCoreError(f"segment label values must be distinct and >= 1, got {values}",
                           fix="give each segment its own value (0 is the background)")
    for segment in segments:
        color = np.asarray(segment.color_rgb, dtype=float)
        if not segment.name or color.shape != (3,) or np.any(color < 0) or np.any(color > 1):
            raise SegCoreError(f"segment {segment.name!r} needs a name and a colour of 3 values in 0..1, "
                               f"got {segment.color_rgb}")
    # bincount is much faster than a sort over a CT-sized map, for the small non-negative values labels have
    small = array.size and array.dtype != np.uint64 and int(array.min()) >= 0 and int(array.max()) < 65536
    present = np.flatnonzero(np.bincount(array.ravel())) if small else np.unique(array)
    if present.size and present[0] < 0:
        raise SegCoreError(f"label values must be >= 0, found {int(present[0])}")
    orphans = sorted(set(present.tolist()) - set(values) - {0})
    if orphans:
        raise SegCoreError(f"the label map holds values {orphans[:20]} that no segment describes",
                           fix="add a Segment for each label value (SegCore.io.segmentation.segments_for_labels)")
    return array.astype(_label_dtype(max(values + [int(present[-1]) if present.size else 0])), copy=False)


def labels_to_segmentation_node(labels: Volume, segments: Sequence[Segment], scene, *, reference_node=None,
                                node=None, name: str = ""):
    """A segmentation node holding `labels` with one segment per `Segment`, added to `scene` (or `node` emptied
    and refilled). Returns the node.

    labels.array: (Z, Y, X) integer (or bool), every non-zero value the label_value of one of `segments`.
    Each segment gets its name, colour (0..1), label value, ID 'Segment_<value>' and, when set, its
    terminology in the TerminologyEntry tag. reference_node: the input volume node: it becomes the reference
    geometry (and the node reference Slicer's Segment Editor uses), its parent transform the segmentation's,
    and its subject-hierarchy parent the segmentation's; without it the label grid is the reference geometry.
    """
    array = _checked_labels(labels, segments)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or "Segmentation")
    else:
        node.GetSegmentation().RemoveAllSegments()
        if name:
            node.SetName(name)
    node.SetSourceRepresentationToBinaryLabelmap()
    segmentation = node.GetSegmentation()
    shared = oriented_image(labels.with_array(array))  # one layer, shared by every segment
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for item in segments:
        segment = slicer.vtkSegment()
        segment.SetName(item.name)
        segment.SetNameAutoGenerated(False)  # else Slicer may rename or recolour it from a terminology
        segment.SetColor(*(float(c) for c in item.color_rgb))
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(int(item.label_value))
        if item.terminology:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), item.terminology)
        segment.AddRepresentation(representation, shared)
        segment_id = str(item.extra.get("ID") or f"Segment_{int(item.label_value)}")
        if not segmentation.AddSegment(segment, segment_id):
            raise SegCoreError(f"Slicer refused segment {item.name!r} (ID {segment_id!r})",
                               fix="give each segment a distinct ID")
    if reference_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), reference_node.GetID())
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        _place_beside(scene, node, reference_node)
    else:
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(shared))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _place_beside(scene, node, reference_node) -> None:
    """Put `node` under the same subject-hierarchy parent (patient / study folder) as `reference_node`."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        return
    parent, item = hierarchy.GetItemParent(reference_item), hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:  # Slicer's application adds an item for every new node; a scene without it does not
        hierarchy.CreateItem(parent, node)


def segments_of_node(node) -> list[Segment]:
    """The node's segments in its order, as SegCore.io Segments: name, label value, colour, layer, terminology
    (None when untagged) and extra {"ID": segment ID}."""
    segmentation = node.GetSegmentation()
    result = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        terminology = vtk.reference("")  # GetTag fills a std::string& argument
        if not segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology):
            terminology = None
        result.append(Segment(segment.GetName(), int(segment.GetLabelValue()), tuple(segment.GetColor()),
                              max(int(segmentation.GetLayerIndex(segment_id)), 0), str(terminology or "") or None,
                              {"ID": segment_id}))
    return result


def segmentation_grid(node) -> Grid:
    """The grid of the node's reference image geometry (the input volume's, for a node made here)."""
    text = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    matrix, extent = vtk.vtkMatrix4x4(), [0] * 6
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, matrix, extent):
        raise SegCoreError(f"segmentation {node.GetName()!r} has no reference geometry",
                           fix="choose the volume it belongs to (its grid) explicitly")
    ijk_to_ras = numpy_matrix(matrix)
    ijk_to_ras[:3, 3] = (ijk_to_ras @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    return Grid.from_ijk_to_ras(ijk_to_ras, tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0)))


def segment_mask(node, segment_id: str, grid: Grid) -> np.ndarray:
    """One segment sampled onto `grid` (nearest neighbour): a (Z, Y, X) bool array."""
    image = slicer.vtkOrientedImageData()
    if node.GetSegmentation().GetSegment(segment_id) is None or not node.GetBinaryLabelmapRepresentation(
            segment_id, image):
        raise SegCoreError(f"segmentation {node.GetName()!r} has no binary labelmap of segment {segment_id!r}",
                           fix="choose an existing segment (a closed-surface segmentation needs a binary "
                               "labelmap: Segmentations module, Representations)")
    if image.GetPointData().GetScalars() is None or image.IsEmpty():
        return np.zeros(grid.shape_zyx, dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, oriented_image_of_grid(grid), resampled, False, False):
        raise SegCoreError(f"could not sample segment {segment_id!r} onto the grid {grid}")
    mask = volume_from_oriented_image(resampled)
    placed = place_on_grid(mask.with_array(mask.array != 0), grid)
    if placed is None:  # the resampler keeps the reference lattice, so this means a bug, not bad input
        raise SegCoreError(f"segment {segment_id!r} was resampled off the grid {grid}")
    return placed.array


def segmentation_node_to_labels(node, grid: Grid, *, label_values: Mapping[str, int] | None = None,
                                overlap: str = "error") -> tuple[Volume, list[Segment]]:
    """A segmentation node as one (Z, Y, X) label `Volume` on `grid`, and its segments with their values in it.

    label_values: {segment name: value} to keep only those segments, with those values (a name the node lacks
    is skipped); None: every segment, with its own label value when these are distinct (as in a node made by
    `labels_to_segmentation_node`), else 1..N in segment order. overlap: 'error' (SegCoreError naming the two
    segments) or 'last' (the later segment wins). Returns (labels uint8/int16/int32, segments).
    """
    if overlap not in OVERLAP_RULES:
        raise SegCoreError(f"unknown overlap rule {overlap!r}", fix=f"use one of {', '.join(OVERLAP_RULES)}")
    segments = segments_of_node(node)
    if label_values is not None:
        segments = [s for s in segments if s.name in label_values]
        values = [int(label_values[s.name]) for s in segments]
    else:
        values = [s.label_value for s in segments]
        if len(set(values)) != len(values):
            values = list(range(1, len(segments) + 1))
    if any(value < 1 for value in values) or len(set(values)) != len(values):
        raise SegCoreError(f"label values must be distinct and >= 1, got {values}")
    labels = np.zeros(grid.shape_zyx, dtype=_label_dtype(max(values, default=0)))
    owner = np.full(grid.shape_zyx, -1, dtype=np.int32) if overlap == "error" else None
    result = []
    for index, (segment, value) in enumerate(zip(segments, values, strict=True)):
        mask = segment_mask(node, segment.extra["ID"], grid)
        if owner is not None:
            clash = mask & (owner >= 0)
            if clash.any():
                other = segments[int(owner[clash][0])].name
                raise SegCoreError(f"segments {other!r} and {segment.name!r} of {node.GetName()!r} overlap in "
                                   f"{int(clash.sum())} voxels, which one label map cannot hold",
                                   fix="remove the overlap in the Segment Editor, or let the later segment win "
                                       "(overlap='last')")
            owner[mask] = index
        labels[mask] = value
        result.append(Segment(segment.name, value, segment.color_rgb, 0, segment.terminology, dict(segment.extra)))
    return Volume(labels, grid), result
