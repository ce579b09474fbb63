"""Slicer .seg.nrrd: SegCore reads Slicer's own sample files as slicerio/pynrrd do, and writes files they read."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import slicerio

from SegCore.errors import SegCoreError
from SegCore.io import Segment, read_image, read_label, read_segmentation, write_segmentation
from SegCore.io.segmentation import distinct_color, merge_layers, segments_for_labels
from SegCore.volume import Volume

DATA = Path(slicerio.__file__).parent / "data"
CT = DATA / "CTChest4.nrrd"
SEG = DATA / "Segmentation.seg.nrrd"
SEG_OVERLAPPING = DATA / "SegmentationOverlapping.seg.nrrd"


def _slicerio_voxels_zyx(segmentation: dict) -> np.ndarray:
    """slicerio (pynrrd, Fortran order) gives (X, Y, Z) or (L, X, Y, Z); SegCore's order is the reverse."""
    voxels = segmentation["voxels"]
    return voxels.T if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)


def _terminology_from_header(header: dict, index: int) -> str:
    tags = [t for t in header[f"Segment{index}_Tags"].split("|") if t.startswith("TerminologyEntry:")]
    return tags[0].split(":", 1)[1]


@pytest.mark.parametrize("path", [SEG, SEG_OVERLAPPING], ids=["single-layer", "two-layers"])
def test_slicer_sample_reads_like_slicerio(path):
    volume, segments = read_segmentation(path)
    reference = slicerio.read_segmentation(str(path))
    header = nrrd.read_header(str(path))
    assert [s.name for s in segments] == [s["name"] for s in reference["segments"]]
    assert [s.label_value for s in segments] == [s["labelValue"] for s in reference["segments"]]
    assert [s.layer for s in segments] == [s["layer"] for s in reference["segments"]]
    assert [s.extra["ID"] for s in segments] == [s["id"] for s in reference["segments"]]
    for index, (segment, expected) in enumerate(zip(segments, reference["segments"], strict=True)):
        np.testing.assert_allclose(segment.color_rgb, expected["color"], atol=1e-9)
        assert segment.terminology == _terminology_from_header(header, index)
        assert segment.extra["Extent"] == header[f"Segment{index}_Extent"]  # offset is 0 0 0 in these files
    np.testing.assert_allclose(volume.ijk_to_lps(), reference["ijkToLPS"], atol=1e-9)
    assert np.array_equal(volume.array, _slicerio_voxels_zyx(reference))


def test_sample_segmentation_lies_on_the_sample_ct_grid():
    """CTChest4.nrrd read by SegCore has pynrrd's geometry, and the segmentation lies on the same grid."""
    ct = read_image(CT)
    header = nrrd.read_header(str(CT))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(ct.ijk_to_lps()[:3, :3], np.asarray(header["space directions"]).T, atol=1e-9)
    np.testing.assert_allclose(ct.grid.origin_lps, header["space origin"], atol=1e-9)
    assert ct.shape_zyx == tuple(int(s) for s in reversed(header["sizes"]))
    labels = read_label(SEG, reference=ct.grid, allowed_values=range(8))
    assert labels.array.shape == ct.array.shape
    assert sorted(np.unique(labels.array).tolist()) == list(range(8))


def test_sample_segments_with_names_and_values():
    _, segments = read_segmentation(SEG)
    assert len(segments) == 7
    header = nrrd.read_header(str(SEG))
    for index, segment in enumerate(segments):
        assert segment.name == header[f"Segment{index}_Name"]
        assert segment.label_value == int(header[f"Segment{index}_LabelValue"])


@pytest.mark.parametrize("path", [SEG, SEG_OVERLAPPING], ids=["single-layer", "two-layers"])
def test_round_trip_keeps_segments_and_voxels(tmp_path, path):
    volume, segments = read_segmentation(path)
    written = write_segmentation(volume, segments, tmp_path / "copy.seg.nrrd")
    volume2, segments2 = read_segmentation(written)
    assert segments2 == segments  # names, values, layers, colours, terminology, ID, extents, tags
    assert volume2.grid.mismatch(volume.grid) is None
    assert np.array_equal(volume2.array, volume.array)
    # and slicerio reads our file as it reads Slicer's
    theirs = slicerio.read_segmentation(str(written))
    original = slicerio.read_segmentation(str(path))
    for ours, expected in zip(theirs["segments"], original["segments"], strict=True):
        for key in ("name", "labelValue", "layer", "id", "color", "terminology", "extent"):
            assert ours[key] == expected[key], key
    np.testing.assert_allclose(theirs["ijkToLPS"], original["ijkToLPS"], atol=1e-9)
    assert np.array_equal(theirs["voxels"], original["voxels"])


def test_written_label_map_reads_in_slicerio_with_names_colours_values(tmp_path, oblique_direction, rng):
    labels = Volume.create(rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint8), (0.8, 0.9, 3.0),
                           (5.0, -6.0, 7.0), oblique_direction)
    segments = segments_for_labels([1, 2, 3], {1: "liver", 3: "pancreas"})
    path = write_segmentation(labels, segments, tmp_path / "labels.seg.nrrd")
    theirs = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in theirs["segments"]] == ["liver", "Segment_2", "pancreas"]
    assert [s["labelValue"] for s in theirs["segments"]] == [1, 2, 3]
    for ours, expected in zip(theirs["segments"], segments, strict=True):
        np.testing.assert_allclose(ours["color"], expected.color_rgb, atol=1e-12)
    np.testing.assert_allclose(theirs["ijkToLPS"], labels.ijk_to_lps(), atol=1e-9)
    assert np.array_equal(theirs["voxels"], labels.array.T)
    # slicerio's own mask extraction agrees voxel for voxel
    mask = slicerio.segment_mask(theirs, slicerio.segment_from_name(theirs, "pancreas"))
    assert np.array_equal(mask.astype(bool), (labels.array == 3).T)


def test_non_ascii_names_and_extra_fields_round_trip(tmp_path):
    segments = [Segment("Lunge rechts – ü", 3, (0.25, 0.5, 0.75), terminology="ctx~SCT^1^a~SCT^2^b~^^~~^^~^^",
                        extra={"ID": "lung_r", "Tags": "Segmentation.Status:completed|", "Custom": "x y"})]
    path = write_segmentation(Volume.create(np.full((2, 2, 2), 3, np.uint8)), segments, tmp_path / "u.seg.nrrd")
    (back,) = read_segmentation(path)[1]
    assert back.name == segments[0].name and back.terminology == segments[0].terminology
    assert back.extra["ID"] == "lung_r" and back.extra["Custom"] == "x y"
    assert back.extra["Tags"] == "Segmentation.Status:completed|" and back.extra["Extent"] == "0 1 0 1 0 1"


def test_extents_written_are_the_segment_bounding_boxes(tmp_path):
    array = np.zeros((4, 5, 6), np.uint8)
    array[1:3, 2, 3:6] = 1  # k 1..2, j 2..2, i 3..5
    path = write_segmentation(Volume.create(array), [Segment("box", 1, (1.0, 0.0, 0.0)),
                                                     Segment("empty", 2, (0.0, 1.0, 0.0))], tmp_path / "b.seg.nrrd")
    header = nrrd.read_header(str(path))
    assert header["Segment0_Extent"] == "3 5 2 2 1 2"
    assert header["Segment1_Extent"] == "0 -1 0 -1 0 -1"
    # an extent read from a file is kept, and widened when the voxels no longer fit in it
    stale = Segment("box", 1, (1.0, 0.0, 0.0), extra={"Extent": "0 4 2 3 2 2"})
    path = write_segmentation(Volume.create(array), [stale], tmp_path / "c.seg.nrrd")
    assert nrrd.read_header(str(path))["Segment0_Extent"] == "0 5 2 3 1 2"


def test_reference_extent_offset_does_not_move_the_volume(tmp_path):
    """Slicer may store a cropped array with Segmentation_ReferenceImageExtentOffset != 0: the NRRD space
    origin is already the stored array's first voxel, so the grid must not move; segment extents are made
    relative to the stored array."""
    array = np.zeros((3, 4, 5), np.uint8)
    array[0:2, 1:3, 2:4] = 1
    original = write_segmentation(Volume.create(array, (1.0, 2.0, 3.0), (7.0, 8.0, 9.0)),
                                  [Segment("a", 1, (1.0, 0.0, 0.0))], tmp_path / "a.seg.nrrd")
    data = original.read_bytes()
    data = data.replace(b"Segmentation_ReferenceImageExtentOffset:=0 0 0",
                        b"Segmentation_ReferenceImageExtentOffset:=10 20 30", 1)
    data = data.replace(b"Segment0_Extent:=2 3 1 2 0 1", b"Segment0_Extent:=12 13 21 22 30 31", 1)
    cropped = tmp_path / "cropped.seg.nrrd"
    cropped.write_bytes(data)
    volume, segments = read_segmentation(cropped)
    header = nrrd.read_header(str(cropped))
    np.testing.assert_allclose(volume.grid.origin_lps, header["space origin"], atol=1e-12)
    assert segments[0].extra["Extent"] == "2 3 1 2 0 1"
    assert np.array_equal(volume.array, array)


def test_overlapping_layers_cannot_become_one_label_map():
    with pytest.raises(SegCoreError, match="overlap") as caught:
        read_label(SEG_OVERLAPPING)
    assert str(SEG_OVERLAPPING) in str(caught.value)


def test_non_overlapping_layers_merge_with_distinct_values():
    layers = np.zeros((2, 3, 4, 5), np.uint8)
    layers[0, 0] = 1
    layers[1, 2] = 1  # same label value in another layer, no overlap
    volume = Volume.create(layers[0]).with_array(layers)
    merged, segments = merge_layers(volume, [Segment("a", 1, (1.0, 0.0, 0.0)), Segment("b", 1, (0.0, 1.0, 0.0), 1)])
    assert [s.label_value for s in segments] == [1, 2] and all(s.layer == 0 for s in segments)
    assert np.array_equal(merged.array == 1, layers[0] == 1)
    assert np.array_equal(merged.array == 2, layers[1] == 1)


def test_label_without_segment_is_refused_and_nothing_written(tmp_path):
    array = np.array([0, 1, 2, 5], np.uint8).reshape(1, 2, 2)
    path = tmp_path / "partial.seg.nrrd"
    with pytest.raises(SegCoreError, match=r"\[5\]") as caught:
        write_segmentation(Volume.create(array), segments_for_labels([1, 2]), path)
    assert str(path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_segments_for_labels_gives_distinct_colours():
    segments = segments_for_labels(range(0, 30), {4: "kidney"})
    assert [s.label_value for s in segments] == list(range(1, 30))
    assert segments[3].name == "kidney" and segments[0].name == "Segment_1"
    colours = np.array([s.color_rgb for s in segments])
    assert len({tuple(c) for c in colours.round(3)}) == len(segments)
    assert np.all((colours >= 0) & (colours <= 1))
    assert distinct_color(0) != distinct_color(1)
