"""SegCore.slicer_utils against real MRML (the `slicer-core` wheel: Slicer's MRML, logic and segmentation
libraries without Qt): volume nodes, segmentation nodes, table nodes and their storage nodes.

Oracles: voxel positions computed by hand from origin, spacing and direction; Slicer's own functions
(`slicer.util.arrayFromVolume`, `ExportSegmentsToLabelmapNode`, the storage nodes); SimpleITK and slicerio
reading what MRML wrote; SegCore's .seg.nrrd reader and writer against MRML's segmentation storage node.
"""

from __future__ import annotations

import csv
import importlib.util
import math

import numpy as np
import pytest

# Skipped only where the wheel is absent; an installed wheel that fails to import is a failure, not a skip, so
# that CI (which installs it with the test extra) cannot pass without running these tests.
if importlib.util.find_spec("slicer") is None:
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import slicerio  # noqa: E402
import vtk  # noqa: E402

from SegCore.errors import SegCoreError  # noqa: E402
from SegCore.io import Segment, read_segmentation, write_segmentation  # noqa: E402
from SegCore.metrics import METRICS_BY_KEY, compare_label_maps  # noqa: E402
from SegCore.slicer_utils.segmentations import (  # noqa: E402
    labels_to_segmentation_node,
    segmentation_grid,
    segmentation_node_to_labels,
    segments_of_node,
    study_segments,
)
from SegCore.slicer_utils.tables import rows_to_table_node  # noqa: E402
from SegCore.slicer_utils.volumes import grid_from_node, volume_from_node, volume_to_node  # noqa: E402
from SegCore.studies import get_study  # noqa: E402
from SegCore.volume import Grid, Volume, from_sitk  # noqa: E402

LOGIC = slicer.vtkSlicerSegmentationsModuleLogic
SPACING = (0.7, 1.3, 2.5)  # anisotropic, (x, y, z) mm
ORIGIN_LPS = (12.0, -30.5, 48.25)


@pytest.fixture
def scene():
    """A scene set up as the application sets it up: its default colour tables, and the segmentation
    converter rules that Slicer's Segmentations module registers at start-up (the wheel registers none)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    yield scene
    scene.Clear(1)


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ras_by_hand(ijk, spacing, origin_lps, direction_lps) -> np.ndarray:
    """RAS of voxel (i, j, k): origin + sum over axes of index * spacing * direction column, then L->R, P->A."""
    lps = np.array(origin_lps, dtype=float)
    for axis in range(3):
        lps = lps + ijk[axis] * spacing[axis] * np.asarray(direction_lps)[:, axis]
    return np.array([-lps[0], -lps[1], lps[2]])


def _corners(shape_zyx):
    return [(i, j, k) for i in (0, shape_zyx[2] - 1) for j in (0, shape_zyx[1] - 1) for k in (0, shape_zyx[0] - 1)]


@pytest.mark.parametrize("flip", [False, True], ids=["oblique", "oblique-flipped"])
def test_scalar_volume_node_geometry_both_ways(scene, oblique_direction, flip, tmp_path):
    direction = oblique_direction @ np.diag([1.0, -1.0, 1.0]) if flip else oblique_direction
    rng = np.random.default_rng(0)
    image = Volume.create(rng.integers(-1000, 2000, (4, 5, 6)).astype(np.int16), SPACING, ORIGIN_LPS, direction)
    node = volume_to_node(image, scene, name="CT")
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "CT"
    assert node.GetDisplayNode() is not None
    for ijk in _corners(image.shape_zyx):
        expected = _ras_by_hand(ijk, SPACING, ORIGIN_LPS, direction)
        np.testing.assert_allclose((_matrix(node) @ (*ijk, 1.0))[:3], expected, atol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), SPACING, rtol=1e-12)
    assert np.array_equal(slicer.util.arrayFromVolume(node), image.array)
    back = volume_from_node(node)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, image.array)
    np.testing.assert_allclose(back.ijk_to_lps(), image.ijk_to_lps(), atol=1e-9)
    # MRML's own volume writer, read by SimpleITK: the same voxels at the same LPS positions.
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "ct.nrrd"))
    assert storage.WriteData(node)
    written = from_sitk(sitk.ReadImage(str(tmp_path / "ct.nrrd")))
    assert written.grid.same_as(image.grid) and np.array_equal(written.array, image.array)


def test_node_built_by_slicer_reads_with_hand_geometry(scene):
    """A node filled with Slicer's own updateVolumeFromArray and a hand-written IJK-to-RAS (rows: R, A, S)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    slicer.util.updateVolumeFromArray(node, array)
    # Columns: i runs anterior (0.5 mm), j to the patient's left (R decreasing, 2 mm), k inferior (3 mm).
    ijk_to_ras = np.array([[0.0, -2.0, 0.0, 10.0],
                           [0.5, 0.0, 0.0, -20.0],
                           [0.0, 0.0, -3.0, 30.0],
                           [0.0, 0.0, 0.0, 1.0]])
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    volume = volume_from_node(node)
    assert volume.shape_zyx == (3, 4, 5) and np.array_equal(volume.array, array)
    np.testing.assert_allclose(volume.grid.spacing_xyz_mm, (0.5, 2.0, 3.0), rtol=1e-12)
    np.testing.assert_allclose(volume.grid.origin_lps, (-10.0, 20.0, 30.0), atol=1e-12)
    np.testing.assert_allclose(volume.grid.direction_lps, [[0, 1, 0], [-1, 0, 0], [0, 0, -1]], atol=1e-12)
    assert volume.array[2, 3, 4] == array[2, 3, 4]  # voxel (i, j, k) = (4, 3, 2)


def test_vector_volume_node_multichannel_both_ways(scene, oblique_direction, tmp_path):
    rng = np.random.default_rng(0)
    image = Volume.create(rng.random((3, 4, 5, 6), dtype=np.float32), SPACING, ORIGIN_LPS, oblique_direction)
    node = volume_to_node(image, scene, name="channels")
    assert node.IsA("vtkMRMLVectorVolumeNode") and node.GetImageData().GetNumberOfScalarComponents() == 3
    assert np.array_equal(slicer.util.arrayFromVolume(node), np.moveaxis(image.array, 0, -1))  # (Z, Y, X, C)
    for ijk in _corners(image.shape_zyx):
        np.testing.assert_allclose((_matrix(node) @ (*ijk, 1.0))[:3],
                                   _ras_by_hand(ijk, SPACING, ORIGIN_LPS, oblique_direction), atol=1e-9)
    back = volume_from_node(node)
    assert back.num_channels == 3 and np.array_equal(back.array, image.array) and back.grid.same_as(image.grid)
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "channels.nrrd"))
    assert storage.WriteData(node)
    written = from_sitk(sitk.ReadImage(str(tmp_path / "channels.nrrd")))
    assert written.grid.same_as(image.grid) and np.array_equal(written.array, image.array)
    with pytest.raises(SegCoreError, match="vector volume node"):
        volume_to_node(image, scene, node=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))


def test_image_extent_not_starting_at_zero_moves_the_origin(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetExtent(2, 4, 1, 2, 3, 3)  # i 2..4, j 1..2, k 3
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    node.SetAndObserveImageData(image)
    node.SetSpacing(2.0, 3.0, 4.0)
    node.SetOrigin(1.0, 1.0, 1.0)  # RAS, identity directions
    grid = grid_from_node(node)
    assert grid.shape_zyx == (1, 2, 3)
    np.testing.assert_allclose(grid.origin_lps, (-(1 + 2 * 2), -(1 + 1 * 3), 1 + 3 * 4), atol=1e-12)


def _thalamus_labels(oblique_direction) -> tuple[Volume, list]:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1:3, 1:4, 1:3] = 1
    labels[2:4, 2:5, 4:6] = 2
    return (Volume.create(labels, SPACING, ORIGIN_LPS, oblique_direction),
            list(get_study("thalamus").label_set("left_right")[1:]))


def test_label_volume_to_segmentation_node(scene, oblique_direction):
    labels, study_labels = _thalamus_labels(oblique_direction)
    reference = volume_to_node(labels.with_array(np.zeros(labels.shape_zyx, np.int16)), scene, name="T1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    reference.SetAndObserveTransformNodeID(transform.GetID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study_item = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR")
    hierarchy.CreateItem(study_item, reference)  # the application does this when a volume is loaded
    # a third study label with no voxels: still one segment per label
    absent = Segment("absent", 3, (0.2, 0.4, 0.6))
    node = labels_to_segmentation_node(labels, study_segments(study_labels) + [absent], scene,
                                       reference_node=reference, name="T1 thalamus")
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3 and segmentation.GetNumberOfLayers() == 1
    for index, label in enumerate(study_labels):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == label.name and segment.GetLabelValue() == label.value
        np.testing.assert_allclose(segment.GetColor(), np.array(label.colour_rgb) / 255.0, atol=1e-12)
        tag = vtk.reference("")
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        assert str(tag) == label.terminology.to_slicer_entry()
        assert segmentation.GetNthSegmentID(index) == f"Segment_{label.value}"
    # reference geometry, node reference, parent transform and subject-hierarchy place of the input volume
    reference_image = LOGIC.CreateOrientedImageDataFromVolumeNode(reference)
    geometry_key = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetConversionParameter(geometry_key) == \
        slicer.vtkSegmentationConverter.SerializeImageGeometry(reference_image)
    assert segmentation_grid(node).same_as(labels.grid)
    assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == reference.GetID()
    assert node.GetTransformNodeID() == transform.GetID()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study_item
    # Slicer's own export, segment by segment, gives back each label's voxels (and none for the absent one)
    for segment_id, value in (("Segment_1", 1), ("Segment_2", 2), ("Segment_3", 3)):
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert LOGIC.ExportSegmentsToLabelmapNode(node, [segment_id], exported, reference)
        assert np.array_equal(slicer.util.arrayFromVolume(exported) != 0, labels.array == value)
    back, segments = segmentation_node_to_labels(node, grid_from_node(reference))
    assert np.array_equal(back.array, labels.array) and [s.label_value for s in segments] == [1, 2, 3]
    # a second run into the same node replaces its segments
    left_only = labels.with_array((labels.array == 1).astype(np.int64))
    assert labels_to_segmentation_node(left_only, study_segments(study_labels[:1]), scene, node=node) is node
    assert [s.name for s in segments_of_node(node)] == ["left thalamus"]


def test_label_values_without_a_segment_are_refused(scene, oblique_direction):
    labels, study_labels = _thalamus_labels(oblique_direction)
    with pytest.raises(SegCoreError, match=r"values \[2\] that no segment describes"):
        labels_to_segmentation_node(labels, study_segments(study_labels[:1]), scene)


def _overlapping_segmentation(scene, grid_volume: Volume):
    """Two segments in two layers, made only with Slicer's API, overlapping in a 1x2x2 block; returns
    (node, reference node, mask A, mask B)."""
    reference = volume_to_node(grid_volume, scene, name="ref")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    a = np.zeros(grid_volume.shape_zyx, np.uint8)
    a[1:3, 1:3, 1:3] = 1
    b = np.zeros(grid_volume.shape_zyx, np.uint8)
    b[2:4, 1:3, 1:4] = 1
    for name, mask in (("A", a), ("B", b)):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.util.updateVolumeFromArray(labelmap, mask)
        labelmap.SetIJKToRASMatrix(_vtk(_matrix(reference)))
        segment_id = node.GetSegmentation().AddEmptySegment(name, name)
        image = LOGIC.CreateOrientedImageDataFromVolumeNode(labelmap)
        assert LOGIC.SetBinaryLabelmapToSegment(image, node, segment_id, LOGIC.MODE_REPLACE)
    assert node.GetSegmentation().GetNumberOfLayers() == 2
    return node, reference, a.astype(bool), b.astype(bool)


def _vtk(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, array[r, c])
    return matrix


def test_overlapping_segments_are_refused_or_the_later_wins(scene, oblique_direction):
    grid_volume = Volume.create(np.zeros((5, 4, 5), np.int16), SPACING, ORIGIN_LPS, oblique_direction)
    node, reference, a, b = _overlapping_segmentation(scene, grid_volume)
    assert (a & b).sum() == 4
    with pytest.raises(SegCoreError, match=r"'A' and 'B' .* overlap in 4 voxels"):
        segmentation_node_to_labels(node, grid_volume.grid)
    labels, segments = segmentation_node_to_labels(node, grid_volume.grid, overlap="last")
    expected = np.where(b, 2, np.where(a, 1, 0))  # both have label value 1 in their layers: renumbered 1, 2
    assert np.array_equal(labels.array, expected) and [s.name for s in segments] == ["A", "B"]
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")  # Slicer's own rule: the later wins too
    assert LOGIC.ExportSegmentsToLabelmapNode(node, ["A", "B"], exported, reference)
    assert np.array_equal(slicer.util.arrayFromVolume(exported), expected)
    only_b, segments = segmentation_node_to_labels(node, grid_volume.grid, label_values={"B": 7, "missing": 9})
    assert np.array_equal(only_b.array, np.where(b, 7, 0)) and [s.name for s in segments] == ["B"]


def test_segments_sampled_onto_a_finer_oblique_grid(scene, oblique_direction):
    """Each voxel split in 3x3x3 around its centre: nearest neighbour is exactly np.repeat."""
    grid_volume = Volume.create(np.zeros((5, 4, 5), np.int16), SPACING, ORIGIN_LPS, oblique_direction)
    node, _, a, _ = _overlapping_segmentation(scene, grid_volume)
    fine_spacing = tuple(s / 3 for s in SPACING)
    fine_origin = np.array(ORIGIN_LPS) - sum(fine_spacing[c] * oblique_direction[:, c] for c in range(3))
    fine = Grid((15, 12, 15), fine_spacing, tuple(fine_origin), tuple(map(tuple, oblique_direction)))
    labels, _ = segmentation_node_to_labels(node, fine, label_values={"A": 1})
    assert np.array_equal(labels.array, a.repeat(3, 0).repeat(3, 1).repeat(3, 2).astype(np.uint8))


def test_metric_rows_fill_a_table_node_with_titles_and_units(scene, tmp_path):
    pred = np.zeros((6, 6, 6), np.uint8)
    ref = np.zeros((6, 6, 6), np.uint8)
    pred[1:4, 1:4, 1:4], ref[2:5, 1:4, 1:4] = 1, 1
    ref[0, 0, 0] = 2  # label 2 has no prediction: NaN precision
    rows = compare_label_maps(pred, ref, (1.0, 1.0, 2.0), labels={1: "liver", 2: "tumour"})
    node = rows_to_table_node(rows, scene, name="Review")
    table = node.GetTable()
    assert node.GetNumberOfRows() == 2 and node.GetNumberOfColumns() == len(rows[0])
    assert table.GetColumnByName("label").IsA("vtkIntArray") and table.GetColumnByName("status").IsA("vtkStringArray")
    for key in ("dice", "hd95_mm", "volume_pred_ml", "surface_dice"):
        info = METRICS_BY_KEY[key]
        assert (node.GetColumnTitle(key), node.GetColumnUnitLabel(key), node.GetColumnDescription(key)) == \
               (info.title, info.unit, info.description)
        for r, row in enumerate(rows):
            value = table.GetColumnByName(key).GetValue(r)
            assert value == row[key] or (math.isnan(value) and math.isnan(row[key]))
    assert math.isnan(rows[1]["precision"]) and math.isnan(table.GetColumnByName("precision").GetValue(1))
    assert node.GetColumnTitle("label_name") == "Segment" and node.GetCellText(1, 1) == "tumour"
    # MRML's table storage node writes the CSV and a schema with the units, titles and descriptions
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "review.csv"))
    assert storage.WriteData(node)
    with open(tmp_path / "review.schema.csv", newline="") as handle:
        schema = {row["columnName"]: row for row in csv.DictReader(handle)}
    assert schema["hd95_mm"]["unitLabel"] == "mm" and schema["volume_ref_ml"]["unitLabel"] == "ml"
    assert schema["dice"]["title"] == "Dice" and schema["dice"]["type"] == "double"
    with open(tmp_path / "review.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    # MRML writes 6 significant digits (vtkVariant's default); SegCore's rows_to_csv keeps full precision
    np.testing.assert_allclose([float(r["dice"]) for r in written], [row["dice"] for row in rows], rtol=1e-6)
    rows_to_table_node(rows[:1], scene, node=node, columns=["label_name", "dice"])  # refill: only these
    assert node.GetNumberOfColumns() == 2 and node.GetNumberOfRows() == 1


def test_seg_nrrd_written_by_mrml_reads_in_segcore(scene, oblique_direction, tmp_path):
    labels, study_labels = _thalamus_labels(oblique_direction)
    node = labels_to_segmentation_node(labels, study_segments(study_labels), scene)
    path = tmp_path / "thalamus.seg.nrrd"
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    volume, segments = read_segmentation(path)
    assert np.array_equal(volume.array, labels.array) and volume.grid.same_as(labels.grid)
    for segment, label in zip(segments, study_labels, strict=True):
        assert (segment.name, segment.label_value, segment.layer) == (label.name, label.value, 0)
        np.testing.assert_allclose(segment.color_rgb, np.array(label.colour_rgb) / 255.0, atol=1e-6)
        assert segment.terminology == label.terminology.to_slicer_entry()
    by_slicerio = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in by_slicerio["segments"]] == [label.name for label in study_labels]
    np.testing.assert_allclose(by_slicerio["ijkToLPS"], labels.ijk_to_lps(), atol=1e-9)


def test_seg_nrrd_written_by_segcore_reads_in_mrml(scene, oblique_direction, tmp_path):
    rng = np.random.default_rng(0)
    layers = (rng.random((2, 4, 5, 6)) < 0.3).astype(np.uint8)  # two layers, overlapping
    layers[1] *= 4
    segments = [Segment("vessel", 1, (1.0, 0.0, 0.0), 0, "ctx~SCT^1^A~SCT^2^B~^^~Anatomic codes - DICOM master "
                        "list~^^~^^"), Segment("nerve", 4, (0.0, 0.5, 1.0), 1)]
    volume = Volume.create(layers, SPACING, ORIGIN_LPS, oblique_direction)
    path = write_segmentation(volume, segments, tmp_path / "written.seg.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert node.GetSegmentation().GetNumberOfLayers() == 2
    read = segments_of_node(node)
    default = vtk.reference("")  # an untagged segment gets the terminology every new vtkSegment has (Tissue)
    assert slicer.vtkSegment().GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), default)
    assert [(s.name, s.label_value, s.layer, s.terminology) for s in read] == \
           [("vessel", 1, 0, segments[0].terminology), ("nerve", 4, 1, str(default))]
    np.testing.assert_allclose([s.color_rgb for s in read], [s.color_rgb for s in segments], atol=1e-6)
    for layer, (segment, value) in enumerate(((read[0], 1), (read[1], 4))):
        only, _ = segmentation_node_to_labels(node, volume.grid, label_values={segment.name: value})
        assert np.array_equal(only.array, layers[layer])
