"""`segcore convert`: in-process through the CLI entry point, and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicerio

from SegCore.cli import main
from SegCore.io import (
    Segment,
    read_dicom_series,
    read_image,
    read_label,
    read_segmentation,
    write_dicom_series,
    write_image,
    write_segmentation,
)
from SegCore.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SEG = Path(slicerio.__file__).parent / "data" / "Segmentation.seg.nrrd"


@pytest.fixture
def ct(rng, oblique_direction) -> Volume:
    rotation = oblique_direction @ np.diag([1.0, 1.0, -1.0])  # right-handed, so DICOM keeps the slice order
    return Volume.create(rng.integers(-1024, 2000, size=(5, 6, 7)).astype(np.int16), (0.8, 0.7, 2.0),
                         (-50.0, 20.0, 100.0), rotation)


@pytest.fixture
def labels(ct) -> Volume:
    array = np.zeros(ct.shape_zyx, np.uint8)
    array[1:3, 2:4, 1:5] = 1
    array[3:, :2, :] = 2
    array[0, 0, 0] = 4
    return ct.with_array(array)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_image_to_nrrd_keeps_geometry_and_values(tmp_path, ct):
    source = write_image(ct, tmp_path / "ct.nii.gz")
    assert main(["convert", str(source), str(tmp_path / "ct.nrrd")]) == 0
    back = read_image(tmp_path / "ct.nrrd")
    assert back.grid.mismatch(ct.grid) is None and np.array_equal(back.array, ct.array)


def test_labels_to_seg_nrrd_with_names_and_distinct_colours(tmp_path, labels):
    source = write_image(labels, tmp_path / "labels.nii.gz")
    target = tmp_path / "labels.seg.nrrd"
    assert main(["convert", str(source), str(target), "--names", "1=liver, 2=spleen"]) == 0
    theirs = slicerio.read_segmentation(str(target))
    assert [(s["name"], s["labelValue"]) for s in theirs["segments"]] == [
        ("liver", 1), ("spleen", 2), ("Segment_4", 4)]
    colours = {tuple(s["color"]) for s in theirs["segments"]}
    assert len(colours) == 3
    volume, _ = read_segmentation(target)
    assert np.array_equal(volume.array, labels.array) and volume.grid.mismatch(labels.grid) is None


def test_seg_nrrd_to_seg_nrrd_keeps_names_and_colours(tmp_path):
    target = tmp_path / "copy.seg.nrrd"
    assert main(["convert", str(SAMPLE_SEG), str(target)]) == 0
    original, copy = read_segmentation(SAMPLE_SEG)[1], read_segmentation(target)[1]
    assert [(s.name, s.color_rgb, s.label_value) for s in copy] == [(s.name, s.color_rgb, s.label_value)
                                                                   for s in original]


def test_seg_nrrd_to_label_nifti(tmp_path):
    target = tmp_path / "labels.nii.gz"
    assert main(["convert", str(SAMPLE_SEG), str(target)]) == 0
    expected = slicerio.read_segmentation(str(SAMPLE_SEG))["voxels"]  # (X, Y, Z), as nibabel indexes
    assert np.array_equal(np.asanyarray(nib.load(str(target)).dataobj), expected)


def test_image_to_dicom_folder_and_back(tmp_path, ct):
    source = write_image(ct, tmp_path / "ct.mha")
    assert main(["convert", str(source), str(tmp_path / "dicom")]) == 0
    back = read_dicom_series(tmp_path / "dicom")
    assert back.grid.mismatch(ct.grid) is None and np.array_equal(back.array, ct.array)


def test_convert_replaces_existing_output_atomically(tmp_path, ct):
    first = write_image(ct, tmp_path / "first.nrrd")
    second = write_image(ct.with_array(ct.array + 1), tmp_path / "second.nrrd")
    target = tmp_path / "out.nii.gz"
    assert main(["convert", str(first), str(target)]) == 0
    assert main(["convert", str(second), str(target)]) == 0
    assert np.array_equal(read_image(target).array, ct.array + 1)
    assert _files(tmp_path) == ["first.nrrd", "out.nii.gz", "second.nrrd"]  # no temporary file left


def test_failing_convert_leaves_no_partial_file_and_keeps_old_output(tmp_path, ct, capsys):
    probabilities = write_image(ct.with_array(ct.array / 7.0), tmp_path / "prob.nii.gz")
    target = write_segmentation(ct.with_array(np.ones(ct.shape_zyx, np.uint8)), [Segment("old", 1, (1, 0, 0))],
                                tmp_path / "old.seg.nrrd")
    before = target.read_bytes()
    assert main(["convert", str(probabilities), str(target)]) == 1
    assert "whole numbers" in capsys.readouterr().err
    assert target.read_bytes() == before
    assert main(["convert", str(probabilities), str(tmp_path / "new.seg.nrrd")]) == 1
    assert _files(tmp_path) == ["old.seg.nrrd", "prob.nii.gz"]


def test_convert_refuses_to_overwrite_its_input(tmp_path, ct, capsys):
    source = write_image(ct, tmp_path / "ct.nrrd")
    before = source.read_bytes()
    assert main(["convert", str(source), str(tmp_path / "." / "ct.nrrd")]) == 1
    assert "overwrite an input" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_convert_rejects_bad_options(tmp_path, ct, capsys):
    source = write_image(ct, tmp_path / "ct.nrrd")
    assert main(["convert", str(source), str(tmp_path / "x.seg.nrrd"), "--names", "liver"]) == 1
    assert "--names item 'liver'" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "x.seg.nrrd"), "--names", "1"]) == 1
    assert "not VALUE=NAME" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "x.nii"), "--series", "1.2.3"]) == 1
    assert "DICOM folder" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "x.png")]) == 1
    assert "cannot write '.png'" in capsys.readouterr().err
    assert _files(tmp_path) == ["ct.nrrd"]


def _segcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", "convert", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_subprocess_dicom_to_nifti(tmp_path, ct):
    folder = write_dicom_series(ct, tmp_path / "series")
    result = _segcore(str(folder), str(tmp_path / "ct.nii.gz"))
    assert result.returncode == 0, result.stderr
    image = nib.load(str(tmp_path / "ct.nii.gz"))
    np.testing.assert_allclose(image.affine, ct.ijk_to_ras(), atol=1e-4)
    assert np.array_equal(np.asanyarray(image.dataobj), ct.array.T)


def test_subprocess_labels_to_seg_nrrd(tmp_path, labels):
    source = write_image(labels, tmp_path / "labels.nrrd")
    result = _segcore(str(source), str(tmp_path / "labels.seg.nrrd"), "--labels", "--names", "2=spleen")
    assert result.returncode == 0, result.stderr
    volume, segments = read_segmentation(tmp_path / "labels.seg.nrrd")
    assert [s.name for s in segments] == ["Segment_1", "spleen", "Segment_4"]
    assert np.array_equal(volume.array, read_label(source).array)


def test_subprocess_bad_input_exits_1_with_one_line(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    result = _segcore(str(missing), str(tmp_path / "out.nrrd"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("segcore convert: error:") and str(missing) in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out.nrrd").exists()
