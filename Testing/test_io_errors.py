"""Bad files: each is refused with a SegCoreError that names the file and says what is wrong."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
import pytest

from SegCore.errors import SegCoreError
from SegCore.io import read_image, read_label, read_segmentation, write_image
from SegCore.volume import Volume


@pytest.fixture
def image(rng) -> Volume:
    return Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32), (1.0, 1.5, 2.0), (3.0, 4.0, 5.0))


def _refused(path, match: str, reader=read_image, **kwargs) -> str:
    with pytest.raises(SegCoreError, match=match) as caught:
        reader(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message, message
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    _refused(tmp_path / "nothing.nii.gz", "file not found")


def test_unknown_extension(tmp_path):
    path = tmp_path / "slice.png"
    path.write_bytes(b"\x89PNG\r\n")
    message = _refused(path, "unknown file type '.png'")
    assert ".nii.gz" in message and ".nrrd" in message


def test_truncated_gzip(tmp_path, rng):
    """The header survives, the compressed voxels stop early (an interrupted download)."""
    big = Volume.create(rng.normal(size=(16, 16, 16)).astype(np.float32))
    path = write_image(big, tmp_path / "image.nii.gz")
    path.write_bytes(path.read_bytes()[:-2000])
    _refused(path, "corrupt, truncated.*ended before the end-of-stream")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_damaged_compressed_byte_fails_the_checksum(tmp_path, rng, suffix):
    """A damaged byte in the compressed voxels must not come through as wrong voxel values."""
    big = Volume.create(rng.normal(size=(16, 16, 16)).astype(np.float32))
    path = write_image(big, tmp_path / f"image{suffix}")
    data = bytearray(path.read_bytes())
    data[5000:5008] = b"\x00" * 8
    path.write_bytes(bytes(data))
    _refused(path, "corrupt, truncated.*(CRC|data check)")


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "image.nii"
    path.write_bytes(b"this is not a NIfTI header" * 20)
    _refused(path, "corrupt, truncated")


def test_truncated_nifti_data(tmp_path, image):
    path = write_image(image, tmp_path / "image.nii")
    path.write_bytes(path.read_bytes()[:-40])
    _refused(path, "claims 6 x 5 x 4 voxels of 4 bytes each .* holds only 440 bytes of voxel data")


def test_corrupt_nrrd_header(tmp_path):
    path = tmp_path / "image.nrrd"
    path.write_bytes(b"NRRD0004\ntype: banana\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + b"\0" * 8)
    _refused(path, "corrupt, truncated")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_nrrd_and_metaimage_data(tmp_path, image, suffix):
    path = write_image(image, tmp_path / f"image{suffix}")
    path.write_bytes(path.read_bytes()[:-30])
    _refused(path, "truncated")


def test_corrupt_seg_nrrd(tmp_path):
    path = tmp_path / "broken.seg.nrrd"
    path.write_bytes(b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 9 9 9\nencoding: gzip\n\n" + b"junk")
    _refused(path, "corrupt, truncated", reader=read_segmentation)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_counted(tmp_path, image, bad):
    array = image.array.copy()
    array[0, 0, :3] = bad
    array[1, 2, 3] = -np.inf
    path = write_image(image.with_array(array), tmp_path / "nonfinite.nrrd")
    message = _refused(path, "4 of 120 voxels are not finite")
    assert ("3 NaN, 1 Inf" if np.isnan(bad) else "0 NaN, 4 Inf") in message


def test_zero_spacing_nrrd(tmp_path, image):
    path = write_image(image, tmp_path / "image.nrrd")
    header, data = path.read_bytes().split(b"\n\n", 1)
    header = header.replace(b"space directions: (1,0,0)", b"space directions: (0,0,0)")
    path.write_bytes(header + b"\n\n" + data)
    _refused(path, "spacing is zero")


@pytest.mark.parametrize("pixdim", [0.0, -1.5])
def test_zero_or_negative_nifti_pixdim(tmp_path, image, pixdim):
    path = write_image(image, tmp_path / "image.nii")
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", pixdim)  # pixdim[1], the voxel size along i
    path.write_bytes(bytes(data))
    _refused(path, r"pixdim\) must be positive")


def test_singular_direction_nifti(tmp_path, image):
    affine = np.eye(4)
    affine[:3, 1] = affine[:3, 0]  # j runs along i: no volume
    nifti = nib.Nifti1Image(image.to_nifti_array(), None)
    nifti.header.set_sform(affine, code=1)
    path = tmp_path / "singular.nii.gz"
    nib.save(nifti, str(path))
    _refused(path, "singular")


def test_singular_direction_nrrd(tmp_path, image):
    path = write_image(image, tmp_path / "image.nrrd")
    header, data = path.read_bytes().split(b"\n\n", 1)
    header = header.replace(b"(0,1.5,0)", b"(1.5,0,0)")
    path.write_bytes(header + b"\n\n" + data)
    _refused(path, "singular")


def test_nifti_qform_and_sform_that_disagree(tmp_path, image):
    nifti = nib.Nifti1Image(image.to_nifti_array(), None)
    nifti.header.set_sform(np.diag([1.0, 1.5, 2.0, 1.0]), code=1)
    shifted = np.diag([1.0, 1.5, 2.0, 1.0])
    shifted[:3, 3] = [0.0, 0.0, 5.0]
    nifti.header.set_qform(shifted, code=1)
    path = tmp_path / "ambiguous.nii.gz"
    nib.save(nifti, str(path))
    _refused(path, "qform and sform disagree .largest difference 5 mm")


def test_label_grid_mismatch_says_how_and_suggests_resampling(tmp_path, image):
    labels = Volume.create(np.zeros((4, 5, 6), np.uint8), (1.0, 1.5, 2.0), (3.0, 4.0, 9.0))
    path = write_image(labels, tmp_path / "labels.nii.gz")
    message = _refused(path, "origins differ", reader=read_label, reference=image.grid)
    assert "resample" in message


def test_label_with_unexpected_values(tmp_path):
    array = np.zeros((2, 3, 4), np.uint8)
    array[0, 0, :3] = [1, 7, 9]
    path = write_image(Volume.create(array), tmp_path / "labels.nrrd")
    _refused(path, r"unexpected values 7, 9 \(allowed: 0, 1, 2\)", reader=read_label, allowed_values=[0, 1, 2])


def test_non_integer_label(tmp_path, image):
    path = write_image(image, tmp_path / "probabilities.nii.gz")
    _refused(path, "must hold whole numbers", reader=read_label)


def test_float_label_with_whole_numbers_is_accepted(tmp_path):
    array = np.array([0.0, 1.0, 2.0, 255.0] * 6, np.float32).reshape(2, 3, 4)
    labels = read_label(write_image(Volume.create(array), tmp_path / "float_labels.nii"))
    assert labels.array.dtype == np.uint8 and np.array_equal(labels.array, array)


def test_4d_where_3d_expected(tmp_path, image):
    four = image.with_array(np.stack([image.array, image.array]))
    path = write_image(four, tmp_path / "two_channels.nii.gz")
    _refused(path, "4D where 3D is expected", allow_4d=False)
    _refused(path, "4D where 3D is expected", reader=read_label)


def test_folder_is_not_an_image_file(tmp_path):
    _refused(tmp_path, "no DICOM image files")


def test_write_refuses_unknown_suffix_and_leaves_nothing(tmp_path, image):
    with pytest.raises(SegCoreError, match="cannot write images as '.png'"):
        write_image(image, tmp_path / "out.png")
    with pytest.raises(SegCoreError, match="write_segmentation"):
        write_image(image, tmp_path / "out.seg.nrrd")
    assert list(tmp_path.iterdir()) == []
