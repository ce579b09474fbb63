"""Write a `Volume` as a DICOM series: one file per slice, int16 with Rescale Slope/Intercept (HU for CT).

Written with SimpleITK (GDCM) into a temporary folder that replaces the target in one step; the geometry tags
(Image Position/Orientation, Pixel Spacing, Spacing Between Slices) are set so that `read_dicom_series` reads
back the same grid.
"""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_dir
from SegCore.errors import SegCoreError
from SegCore.io.dicom import list_dicom_series
from SegCore.volume import Volume

_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, modality: str = "CT", patient_id: str = "ANON",
                       series_description: str = "", study_uid: str | None = None,
                       series_uid: str | None = None) -> Path:
    """Write a (Z, Y, X) volume as a DICOM series, one file per k slice (IM000001.dcm, ...), in `folder`.

    Stored as int16 with Rescale Slope/Intercept (RescaleType HU for CT): whole-number values within int16
    are stored exactly with slope 1, intercept 0; whole numbers spanning at most 65536 values exactly with
    slope 1 and a shifted intercept; anything else is quantised to 65531 levels (error <= slope / 2).
    Image Position/Orientation carry the grid. DICOM slice stacks are right-handed: `read_dicom_series` sorts
    along row x column, so a volume whose k axis points the other way (det(direction) < 0) reads back with
    its slices reversed - the same voxels at the same positions, direction[:, 2] negated.

    Written atomically: the series is built in a temporary folder that then replaces `folder`. An existing
    `folder` is replaced only when it holds nothing but DICOM files (never other files or sub-folders).
    Returns `folder`.
    """
    import SimpleITK as sitk

    from SegCore.volume import to_sitk

    folder = Path(folder)
    _check_replaceable(folder)
    if volume.array.ndim != 3:
        raise SegCoreError(f"a DICOM series holds one channel, got {volume.num_channels}", path=folder,
                           fix="write each channel as its own series")
    direction = np.asarray(volume.grid.direction_lps)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise SegCoreError("DICOM slices need orthogonal axes, the volume's direction is sheared", path=folder,
                           fix="resample the volume onto an orthogonal grid first (SegCore.volume.resample_to_grid)")
    values = volume.array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise SegCoreError("the volume holds NaN or Inf, which DICOM cannot store", path=folder)
    slope, intercept = _rescale_for(values)
    study_uid, series_uid = study_uid or _new_uid(), series_uid or _new_uid()
    frame_uid, now = _new_uid(), datetime.datetime.now()
    common = {
        "0008|0008": "DERIVED\\SECONDARY\\AXIAL", "0008|0016": _SOP_CLASSES.get(modality, _SECONDARY_CAPTURE),
        "0008|0020": now.strftime("%Y%m%d"), "0008|0021": now.strftime("%Y%m%d"),
        "0008|0030": now.strftime("%H%M%S"), "0008|0031": now.strftime("%H%M%S"), "0008|0060": modality,
        "0008|103e": series_description, "0010|0010": patient_id, "0010|0020": patient_id,
        "0020|000d": study_uid, "0020|000e": series_uid, "0020|0011": "1", "0020|0052": frame_uid,
        "0018|0050": f"{volume.grid.spacing_xyz_mm[2]:.10g}", "0018|0088": f"{volume.grid.spacing_xyz_mm[2]:.10g}",
        "0028|1052": _decimal_string(intercept), "0028|1053": _decimal_string(slope),
        "0028|1054": "HU" if modality == "CT" else "US",
        # GDCM needs the stored type spelled out for a float buffer: 16-bit signed.
        "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",
    }
    image = to_sitk(volume.with_array(values))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with atomic_dir(folder) as tmp:
        for k in range(volume.shape_zyx[0]):
            plane = image[:, :, k:k + 1]  # a 3D one-slice image keeps origin and direction: GDCM writes IPP/IOP
            for tag, value in common.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0020|0013", str(k + 1))
            plane.SetMetaData("0008|0018", _new_uid())
            writer.SetFileName(str(tmp / f"IM{k + 1:06d}.dcm"))
            writer.Execute(plane)
    return folder


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace an existing folder that holds anything but DICOM files (it would be deleted)."""
    if not folder.is_dir():
        return
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    try:
        num_dicom = sum(series.num_files for series in list_dicom_series(folder))
    except SegCoreError:  # a damaged DICOM file: not known to be part of a series SegCore wrote
        num_dicom = -1
    if any(p.is_dir() for p in entries) or num_dicom != len(entries):
        raise SegCoreError("the output folder exists and holds files other than a DICOM series, which writing "
                           "the series would delete", path=folder, fix="choose a new or empty output folder")


def _rescale_for(values: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) so that (value - intercept) / slope fits int16, exactly for whole numbers."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if np.array_equal(values, np.round(values)):
        if low >= -32768 and high <= 32767:
            return 1.0, 0.0
        if high - low <= 65535:
            return 1.0, low + 32768.0
    slope = max((high - low) / 65530.0, 1e-6)  # a little headroom for the 12-digit slope string
    return slope, (high + low) / 2.0


def _decimal_string(value: float) -> str:
    # DICOM DS values hold at most 16 characters.
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise SegCoreError(f"cannot write {value} as a DICOM decimal string")


def _new_uid() -> str:
    """A DICOM UID from a random UUID (the '2.25.' root of DICOM PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"
