"""Read and write images and label maps: NIfTI (nibabel), NRRD and MetaImage (SimpleITK), DICOM folders.

NIfTI goes through nibabel because it reads the sform/qform the way most pipelines (nnU-Net, MONAI) do, keeps
4D MSD images as they are, and reports truncated data clearly; NRRD and MetaImage go through SimpleITK, which
implements every NRRD encoding and the detached-header variants. Either way the result is a `Volume` in LPS.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_file, file_suffix
from SegCore.errors import SegCoreError
from SegCore.io.checks import (
    IMAGE_READ_SUFFIXES,
    IMAGE_WRITE_SUFFIXES,
    SEGMENTATION_SUFFIX,
    check_finite,
    check_input_file,
    library_message,
    naming,
    stat_input,
    unreadable,
    verify_compressed_payload,
)
from SegCore.io.sizes import check_claimed_size, check_inflated_nifti
from SegCore.volume import Grid, Volume

# qform and sform entries may differ by float32 rounding of a quaternion; more is a different geometry.
QFORM_SFORM_ATOL = 1e-3
_SITK_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".seg.nrrd": "NrrdImageIO", ".mha": "MetaImageIO",
            ".mhd": "MetaImageIO"}


def read_image(path: str | os.PathLike, *, allow_4d: bool = True, series_uid: str | None = None) -> Volume:
    """Read an image file or a DICOM series folder as a `Volume` in LPS.

    Files: .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, and .dcm (one DICOM slice). A folder is read as a DICOM series (see
    `read_dicom_series`; it must hold exactly one series). A 4D NIfTI (X, Y, Z, C), as in the Medical
    Segmentation Decathlon, becomes a (C, Z, Y, X) volume with the 3D geometry; so does a multi-component
    NRRD/MetaImage. A fourth axis of size 1 is dropped. A Slicer .seg.nrrd is read as its label map (see
    `read_label`; `read_segmentation` gives the segments too). `series_uid` picks the series of a DICOM folder.

    Returns: array (Z, Y, X) or (C, Z, Y, X) in the file's dtype (NIfTI scl_slope/scl_inter applied).
    Raises SegCoreError naming the file when it is missing, of unknown type, unreadable, holds NaN/Inf,
    has a zero/negative spacing or a singular direction, or is 4D while `allow_4d` is False.
    """
    if stat.S_ISDIR(stat_input(Path(path)).st_mode):
        from SegCore.io.dicom import read_dicom_series

        volume = read_dicom_series(path, series_uid=series_uid)
    else:
        if series_uid is not None:
            raise SegCoreError("a series UID only applies to a DICOM folder", path=path,
                               fix="drop the series UID (--series), or pass the DICOM folder")
        path = check_input_file(path, IMAGE_READ_SUFFIXES + (SEGMENTATION_SUFFIX,))
        suffix = file_suffix(path)
        if suffix == SEGMENTATION_SUFFIX:
            from SegCore.io.segmentation import merge_layers, read_segmentation

            volume = merge_layers(*read_segmentation(path), path=path)[0]
        elif suffix in (".nii", ".nii.gz"):
            volume = _read_nifti(path)
        elif suffix == ".dcm":
            from SegCore.io.dicom import read_dicom_file

            volume = read_dicom_file(path)
        else:
            volume = sitk_image_to_volume(read_sitk_image(path), path)
    check_finite(volume.array, path)
    if not allow_4d and volume.array.ndim == 4:
        raise SegCoreError(f"4D where 3D is expected: the image has {volume.num_channels} channels "
                           f"(array shape {volume.array.shape}, channels first)", path=path,
                           fix="pass a single 3D image (split the channels into separate files)")
    return volume


def _read_nifti(path: Path) -> Volume:
    check_claimed_size(path)
    try:
        with _quiet_nibabel():
            image = _load_nifti(path)
        # dataobj applies scl_slope/scl_inter only when they are set, so integer files stay integer.
        data = np.asanyarray(image.dataobj)
        affine = image.affine
    except SegCoreError:
        raise
    except Exception as error:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        raise unreadable(path, error) from error
    if affine is None:
        raise SegCoreError("NIfTI header has no usable orientation (qform/sform)", path=path,
                           fix="set the qform or sform of the file")
    # nibabel silently replaces zero or negative voxel sizes (pixdim) by 1 or their absolute value; a wrong
    # header must not become a guessed geometry.
    pixdim = _raw_pixdim(path, image)[: min(3, data.ndim)]
    if np.any(~np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise SegCoreError(f"voxel spacing (pixdim) must be positive, the header says {pixdim.tolist()} mm",
                           path=path, fix="repair the image header's pixdim")
    _check_qform_matches_sform(image.header, path)
    data = _squeeze_to_4d(data, path)
    with naming(path):
        return Volume.from_nifti(data, affine)


def _check_qform_matches_sform(header, path: Path) -> None:
    """nibabel reads the sform, ITK (and so Slicer) may read the qform: when both are set they must agree."""
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    if qform_code > 0 and sform_code > 0:
        difference = float(np.abs(qform[:3] - sform[:3]).max())
        if difference > QFORM_SFORM_ATOL:
            raise SegCoreError(f"the NIfTI qform and sform disagree (largest difference {difference:.3g} mm), so "
                               "tools read different geometries from this file", path=path,
                               fix="set both to the correct one, e.g. in nibabel img.set_qform(img.get_sform()) "
                                   "(or set one of the codes to 0)")


def _load_nifti(path: Path):
    """nibabel image of a .nii or .nii.gz. A .nii.gz is decompressed to its end first: nibabel alone stops
    reading once it has the voxels, so a damaged stream (bad CRC) could pass as garbage voxel values."""
    import nibabel as nib

    if file_suffix(path) != ".nii.gz":
        return nib.load(str(path))
    with gzip.open(path) as stream:
        raw = stream.read()
    check_inflated_nifti(raw, path)
    sizes = {struct.unpack(f"{order}i", raw[:4])[0] for order in "<>"} if len(raw) >= 4 else set()
    image_class = nib.Nifti2Image if 540 in sizes else nib.Nifti1Image
    return image_class.from_bytes(raw)


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs header repairs to stderr; the library stays silent (pixdim is checked separately)."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _raw_pixdim(path: Path, image) -> np.ndarray:
    """pixdim[1:4] as stored in the file (nibabel's loaded header has already 'fixed' bad values)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as stream:
        header = type(image.header).from_fileobj(stream, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=float)


def _squeeze_to_4d(data: np.ndarray, path: Path) -> np.ndarray:
    """nibabel order (X, Y, Z[, T][, C]) -> (X, Y, Z) or (X, Y, Z, C); 2D becomes one slice."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector images are stored as (X, Y, Z, 1, C)
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[:, :, :, 0]
    if data.ndim not in (3, 4):
        raise SegCoreError(f"expected a 3D or 4D image, the file holds an array of shape {data.shape}", path=path,
                           fix="convert it to 3D (one file per channel or time point)")
    return data


def read_sitk_image(path: Path):
    """The SimpleITK image of a NRRD/MetaImage file (metadata included); corrupt files raise SegCoreError."""
    import SimpleITK as sitk

    image_io = _SITK_IO[file_suffix(path)]
    check_claimed_size(path)
    try:
        image = sitk.ReadImage(str(path), imageIO=image_io)
    except RuntimeError as error:  # SimpleITK's error carries ITK's message
        verify_compressed_payload(path)  # a damaged or truncated payload is named as such, not in ITK's words
        message = library_message(error)
        # ITK validates geometry while reading; say so in the same words as `Grid` does.
        if "Zero-valued spacing" in message:
            raise SegCoreError(f"voxel spacing is zero along an axis ({message})", path=path,
                               fix="repair the image header's spacing (space directions / ElementSpacing)") from error
        if "determinant is 0" in message:
            raise SegCoreError(f"direction matrix is singular ({message})", path=path,
                               fix="repair the image header's orientation (space directions / TransformMatrix)"
                               ) from error
        raise unreadable(path, error) from error
    # Checked against the voxels ITK inflated, so that the payload is not inflated a second time to verify it.
    try:
        voxels = sitk.GetArrayViewFromImage(image)
    except (RuntimeError, TypeError, ValueError):  # a pixel type numpy cannot view
        voxels = None
    verify_compressed_payload(path, voxels)
    return image


def sitk_image_to_volume(image, path: Path) -> Volume:
    """A 2D/3D (scalar or multi-component) or 4D SimpleITK image as a (Z, Y, X) or (C, Z, Y, X) Volume.

    A 2D image becomes one slice; the fourth axis of a 4D scalar image becomes channels (its geometry is
    dropped); a channel axis of size 1 is dropped.
    """
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    dimension = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # (..., C) -> (C, ...)
    if dimension == 2:
        array = array[..., None, :, :]
    elif dimension > 4 or (dimension == 4 and image.GetNumberOfComponentsPerPixel() > 1):
        raise SegCoreError(f"expected a 3D or 4D image, the file is {dimension}D with "
                           f"{image.GetNumberOfComponentsPerPixel()} components per voxel", path=path,
                           fix="convert it to 3D (one file per channel or time point)")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    keep = min(dimension, 3)
    size = list(image.GetSize())[:keep] + [1] * (3 - keep)
    spacing = list(image.GetSpacing())[:keep] + [1.0] * (3 - keep)
    origin = list(image.GetOrigin())[:keep] + [0.0] * (3 - keep)
    direction = np.eye(3)
    direction[:keep, :keep] = np.reshape(image.GetDirection(), (dimension, dimension))[:keep, :keep]
    with naming(path):
        grid = Grid(tuple(int(s) for s in reversed(size)), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in origin), tuple(tuple(r) for r in direction.tolist()))
        return Volume(np.ascontiguousarray(array), grid)


def read_label(path: str | os.PathLike, *, reference: Grid | None = None,
               allowed_values: Iterable[int] | None = None, series_uid: str | None = None) -> Volume:
    """Read an integer label map (Z, Y, X) from any image format, a DICOM folder or a Slicer .seg.nrrd.

    A .seg.nrrd is merged into one label map with its segments' label values (layers must not overlap; read
    overlapping segmentations with `read_segmentation`). Float files are accepted when every value is a whole
    number (they are cast to the smallest fitting integer type).

    Args:
        reference: the grid the labels must lie on (usually the image's); a mismatch is an error.
        allowed_values: the label values that may occur (include 0 for background).
        series_uid: the series to read from a DICOM folder holding several.
    Returns: a (Z, Y, X) volume with an integer dtype.
    """
    labels = read_image(path, allow_4d=False, series_uid=series_uid)
    array = labels.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif not np.issubdtype(array.dtype, np.integer):
        fractional = array != np.round(array)
        if fractional.any():
            examples = np.unique(array[fractional])[:5].tolist()
            raise SegCoreError(f"a label map must hold whole numbers, {int(fractional.sum())} voxels do not "
                               f"(e.g. {examples})", path=path,
                               fix="pass the label map, not an image, or round the labels when exporting them")
        array = array.astype(_smallest_int_dtype(array))
    labels = labels.with_array(array)
    if reference is not None:
        difference = labels.grid.mismatch(reference)
        if difference is not None:
            raise SegCoreError(f"label map does not lie on the image grid: {difference}", path=path,
                               fix="check that image and labels belong together, or resample the labels onto the "
                                   "image grid (SegCore.volume.resample_to_grid with interpolation='nearest')")
    if allowed_values is not None:
        allowed = {int(v) for v in allowed_values}
        unexpected = sorted(set(np.unique(array).tolist()) - allowed)
        if unexpected:
            shown = ", ".join(str(v) for v in unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
            raise SegCoreError(f"label map holds unexpected values {shown} (allowed: "
                               f"{', '.join(str(v) for v in sorted(allowed))})", path=path,
                               fix="check the label definition of the dataset, or remap the values")
    return labels


def _smallest_int_dtype(array: np.ndarray) -> np.dtype:
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise SegCoreError(f"label values {low}..{high} do not fit a 64-bit integer")


def write_image(volume: Volume, path: str | os.PathLike) -> Path:
    """Write `volume` to `path`, the format chosen by suffix: .nii, .nii.gz, .nrrd or .mha.

    Multi-channel volumes (C, Z, Y, X) become 4D NIfTI (X, Y, Z, C) or multi-component NRRD/MetaImage.
    NRRD and MetaImage are compressed. bool arrays are stored as uint8. Written atomically (a temporary file
    renamed into place); returns the path written.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix == SEGMENTATION_SUFFIX:
        raise SegCoreError("a .seg.nrrd holds segments, not an image", path=path,
                           fix="use write_segmentation for .seg.nrrd, or write a .nrrd")
    if suffix not in IMAGE_WRITE_SUFFIXES:
        raise SegCoreError(f"cannot write images as {suffix or '(no suffix)'!r}", path=path,
                           fix=f"use one of {', '.join(IMAGE_WRITE_SUFFIXES)}")
    array = volume.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SegCoreError(f"cannot store voxels of type {array.dtype} in an image file", path=path,
                           fix="convert the array to an integer or float type")
    volume = volume.with_array(array)
    with atomic_file(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            _write_nifti(volume, tmp)
        else:
            import SimpleITK as sitk

            from SegCore.volume import to_sitk

            sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=True)
    return path


def _write_nifti(volume: Volume, path: Path) -> None:
    import nibabel as nib

    affine = volume.ijk_to_ras()
    image = nib.Nifti1Image(volume.to_nifti_array(), affine)
    # Both qform and sform, code 1 (scanner): ITK, Slicer and nibabel then agree on the orientation. A qform
    # (a rotation) cannot hold a sheared direction; then only the sform is set, so nothing disagrees.
    direction = np.asarray(volume.grid.direction_lps)
    orthonormal = np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    image.set_qform(affine if orthonormal else None, code=1 if orthonormal else 0)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
