"""Geometry survives every format exactly, and SegCore agrees with nibabel and SimpleITK on the same files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from SegCore.io import read_image, read_label, read_segmentation, supported_formats, write_image, write_segmentation
from SegCore.io.segmentation import segments_for_labels
from SegCore.volume import LPS_TO_RAS, Volume

SPACING_MM = (0.7, 1.3, 2.9)  # anisotropic
ORIGIN_LPS = (-101.25, 37.5, 412.125)  # non-zero, not on any grid


@pytest.fixture
def oblique_image(oblique_direction, rng) -> Volume:
    array = rng.normal(100.0, 30.0, size=(5, 6, 7)).astype(np.float32)
    return Volume.create(array, SPACING_MM, ORIGIN_LPS, oblique_direction)


@pytest.fixture
def oblique_labels(oblique_direction, rng) -> Volume:
    return Volume.create(rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8), SPACING_MM, ORIGIN_LPS,
                         oblique_direction)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_image_round_trip_keeps_grid_and_voxels(tmp_path, oblique_image, suffix):
    path = write_image(oblique_image, tmp_path / f"image{suffix}")
    back = read_image(path)
    assert back.grid.mismatch(oblique_image.grid) is None
    assert np.array_equal(back.array, oblique_image.array)
    assert back.array.dtype == np.float32
    # Exact, not merely within Grid's tolerance: NIfTI stores the affine in float32.
    atol = 1e-4 if suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(back.ijk_to_lps(), oblique_image.ijk_to_lps(), atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_round_trip_keeps_integer_type(tmp_path, oblique_labels, suffix):
    path = write_image(oblique_labels, tmp_path / f"labels{suffix}")
    back = read_label(path, reference=oblique_labels.grid, allowed_values=[0, 1, 2, 3])
    assert np.issubdtype(back.array.dtype, np.integer)
    assert np.array_equal(back.array, oblique_labels.array)


def test_seg_nrrd_round_trip_keeps_grid(tmp_path, oblique_labels):
    segments = segments_for_labels([1, 2, 3])
    back, _ = read_segmentation(write_segmentation(oblique_labels, segments, tmp_path / "s.seg.nrrd"))
    assert back.grid.mismatch(oblique_labels.grid) is None
    np.testing.assert_allclose(back.ijk_to_lps(), oblique_labels.ijk_to_lps(), atol=1e-9)
    assert np.array_equal(back.array, oblique_labels.array)


def test_nifti_written_by_segcore_has_ijk_to_ras_affine_in_nibabel(tmp_path, oblique_image):
    path = write_image(oblique_image, tmp_path / "image.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_allclose(image.affine, oblique_image.ijk_to_ras(), atol=1e-4)
    assert image.header.get_qform(coded=True)[1] == 1 and image.header.get_sform(coded=True)[1] == 1
    # nibabel indexes (i, j, k): the same voxel as SegCore's [k, j, i].
    data = np.asanyarray(image.dataobj)
    assert data.shape == (7, 6, 5)
    assert data[6, 2, 1] == oblique_image.array[1, 2, 6]


def test_nifti_written_by_nibabel_is_read_with_its_affine(tmp_path, rng):
    affine_ras = np.array([[0.0, -0.9, 0.0, 12.0], [0.0, 0.0, 1.7, -30.0], [-2.5, 0.0, 0.0, 55.5], [0, 0, 0, 1]])
    data_xyz = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(data_xyz, affine_ras), str(tmp_path / "nib.nii.gz"))
    volume = read_image(tmp_path / "nib.nii.gz")
    np.testing.assert_allclose(volume.ijk_to_ras(), affine_ras, atol=1e-5)
    assert volume.array.dtype == np.int16
    assert volume.array.shape == (4, 5, 6)
    assert volume.array[3, 1, 2] == data_xyz[2, 1, 3]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_simpleitk_and_nibabel_views_agree_on_segcore_files(tmp_path, oblique_image, suffix):
    path = write_image(oblique_image, tmp_path / f"image{suffix}")
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), SPACING_MM, rtol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), oblique_image.grid.direction_lps, atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(image), oblique_image.array)
    if suffix == ".nii.gz":  # the same file through nibabel: RAS = diag(-1, -1, 1) LPS
        np.testing.assert_allclose(nib.load(str(path)).affine, LPS_TO_RAS @ oblique_image.ijk_to_lps(), atol=1e-4)


def test_sheared_grid_round_trips_through_nifti_sform(tmp_path):
    """A non-orthogonal direction cannot be a qform (a rotation): it is written to the sform alone."""
    direction = np.array([[1.0, 0.2, 0.0], [0.0, 0.98, 0.0], [0.0, 0.0, 1.0]])
    direction /= np.linalg.norm(direction, axis=0)
    volume = Volume.create(np.arange(24, dtype=np.int16).reshape(2, 3, 4), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0),
                           direction)
    path = write_image(volume, tmp_path / "sheared.nii.gz")
    header = nib.load(str(path)).header
    assert header.get_qform(coded=True)[1] == 0 and header.get_sform(coded=True)[1] == 1
    back = read_image(path)
    assert back.grid.mismatch(volume.grid) is None and np.array_equal(back.array, volume.array)


def test_known_voxel_lands_at_known_position(tmp_path):
    """Voxel (i, j, k) = (2, 1, 3) of a 2 x 3 x 4 mm grid at LPS origin (10, 20, 30) with identity direction
    lies at LPS (14, 23, 42), i.e. RAS (-14, -23, 42): check it in nibabel's affine and SimpleITK's mapping."""
    volume = Volume.create(np.zeros((5, 4, 3), np.int16), (2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    nii = write_image(volume, tmp_path / "known.nii")
    ras = nib.load(str(nii)).affine @ np.array([2, 1, 3, 1.0])
    np.testing.assert_allclose(ras[:3], [-14.0, -23.0, 42.0], atol=1e-5)
    nrrd = write_image(volume, tmp_path / "known.nrrd")
    lps = sitk.ReadImage(str(nrrd)).TransformIndexToPhysicalPoint((2, 1, 3))
    np.testing.assert_allclose(lps, [14.0, 23.0, 42.0], atol=1e-9)
    header = nrrd.read_bytes()[:400].decode("latin-1")
    assert "space: left-posterior-superior" in header and "space origin: (10,20,30)" in header


def test_4d_msd_nifti_keeps_channels_in_order(tmp_path, rng):
    """MSD stores multi-modal images as (X, Y, Z, C): channel c of the file is volume.array[c]."""
    channels_xyz = [rng.normal(c * 100.0, 1.0, size=(7, 6, 5)).astype(np.float32) for c in range(4)]
    affine = np.diag([-1.2, -1.2, 3.0, 1.0])
    affine[:3, 3] = [50.0, 60.0, -70.0]
    nib.save(nib.Nifti1Image(np.stack(channels_xyz, axis=-1), affine), str(tmp_path / "BRATS_001.nii.gz"))
    volume = read_image(tmp_path / "BRATS_001.nii.gz")
    assert volume.array.shape == (4, 5, 6, 7)
    for c in range(4):
        assert np.array_equal(volume.array[c], channels_xyz[c].T)
    np.testing.assert_allclose(volume.ijk_to_ras(), affine, atol=1e-5)
    # and back out: a 4D NIfTI with the same channel order and affine
    out = nib.load(str(write_image(volume, tmp_path / "copy.nii.gz")))
    assert out.shape == (7, 6, 5, 4)
    assert np.array_equal(np.asanyarray(out.dataobj)[..., 2], channels_xyz[2])


def test_multichannel_nrrd_round_trip(tmp_path, oblique_image):
    volume = oblique_image.with_array(np.stack([oblique_image.array, -oblique_image.array]))
    back = read_image(write_image(volume, tmp_path / "two.nrrd"))
    assert back.array.shape == (2, 5, 6, 7)
    assert np.array_equal(back.array, volume.array)
    assert back.grid.mismatch(volume.grid) is None


def test_supported_formats_lists_every_suffix():
    formats = supported_formats()
    for suffix in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd", "DICOM folder"):
        assert suffix in formats
    assert "read only" in formats[".mhd"] and "read only" not in formats[".mha"]
